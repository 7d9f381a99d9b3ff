"""The platform's own test list, end to end: who can call, what is charged, to whom, exactly."""

from __future__ import annotations

import math
import time
from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.e2e.conftest import Gateway, Member, join, make_member

# Independent of the gateway's code: the contract's formula over the prices in litellm_config.yaml.
PRICES = {  # model -> (input, output) USD per token, as written in the config
    "fake-small": (Decimal("0.00000005"), Decimal("0.0000001")),
    "fake-medium": (Decimal("0.0000006"), Decimal("0.0000012")),
    "fake-large": (Decimal("0.0000025"), Decimal("0.00001")),
    "fake-gpt-4o-mini": (Decimal("0.00000015"), Decimal("0.0000006")),
}
MARKUP = {"free": Decimal("0.0"), "starter": Decimal("0.4"), "professional": Decimal("0.6"),
          "enterprise": Decimal("0.8")}
# what `auto` picks at each level: the level's cheapest model (fake-gpt-4o-mini's output costs less than
# fake-medium's, though balanced lists fake-medium first)
LEVELS = {"eco": (Decimal("0.1"), "fake-small"), "balanced": (Decimal("0.25"), "fake-gpt-4o-mini"),
          "precision": (Decimal("1.0"), "fake-large")}
FREE_AUTO = {"eco": "fake-small", "balanced": "fake-gpt-4o-mini"}


def expected_charge(model: str, tier: str, multiplier: Decimal, prompt: int, completion: int) -> int:
    price_in, price_out = PRICES[model]
    usd = prompt * price_in + completion * price_out
    exact = usd * 1000 * 1000 * (1 + MARKUP[tier]) * multiplier
    return math.ceil(exact)


def settled(member: Member, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The request's record once settled (a stream's settlement is visible within a second)."""
    deadline = time.monotonic() + timeout
    while True:
        response = member.get(f"/v1/requests/{request_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] != "pending" or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_member_with_allocation_calls_and_is_charged_with_attribution(gateway: Gateway) -> None:
    member = make_member(gateway, tier="starter", allocation=50_000_000, period="month")
    raw = member.client().chat.completions.with_raw_response.create(
        model="fake-gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}],
        extra_headers={"X-Request-Id": "attr-1", "X-Power-Level": "precision"})
    completion = raw.parse()
    usage = completion.usage
    assert usage is not None
    # fake-gpt-4o-mini is a balanced model: charged at balanced's multiplier even when asked at precision
    charge = expected_charge("fake-gpt-4o-mini", "starter", Decimal("0.25"), usage.prompt_tokens,
                             usage.completion_tokens)
    assert raw.headers["x-request-id"] == "attr-1"
    assert int(raw.headers["x-credits-charged"]) == charge
    held = int(raw.headers["x-credits-held"])
    assert held >= charge
    record = settled(member, "attr-1")
    version = record.pop("price_version")  # the prices it was charged at, stored for the operator to read
    assert gateway.admin.get(f"/admin/price-versions/{version}")["version"] == version
    assert record == {
        "request_id": "attr-1", "status": "settled", "model": "fake-gpt-4o-mini",
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "held_millicredits": held, "charged_millicredits": charge,
        "list_price_millicredits": math.ceil(
            (usage.prompt_tokens * PRICES["fake-gpt-4o-mini"][0]
             + usage.completion_tokens * PRICES["fake-gpt-4o-mini"][1]) * 1000 * 1000),
        "usage_source": "provider", "byok": False,
    }
    credits = member.get("/v1/credits").json()
    assert credits["org_id"] == member.org_id
    assert credits["pool"] == {"balance": 100_000_000 - charge, "held": 0, "available": 100_000_000 - charge}
    assert credits["allocation"]["limit"] == 50_000_000
    assert credits["allocation"]["used"] == charge
    assert int(raw.headers["x-credits-remaining"]) == 50_000_000 - charge
    usage_by_user = gateway.admin.get(f"/admin/orgs/{member.org_id}/usage?group_by=user")["data"]
    assert [(row["user"], row["charged_millicredits"]) for row in usage_by_user] == [(member.user_id, charge)]


def test_member_without_credit_gets_402_and_nothing_is_charged(gateway: Gateway) -> None:
    broke = make_member(gateway, credit=None)
    with pytest.raises(openai.APIStatusError) as caught:
        broke.client().chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 402
    assert caught.value.body == {"message": caught.value.body["message"], "type": "insufficient_credits",
                                 "param": None, "code": "org_pool_exhausted"}
    capped = make_member(gateway, allocation=1, period="day")
    with pytest.raises(openai.APIStatusError) as caught:
        capped.client().chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 402
    assert caught.value.body["code"] == "user_allocation_exhausted"
    assert capped.get("/v1/credits").json()["pool"] == {"balance": 100_000_000, "held": 0, "available": 100_000_000}


def test_member_of_two_orgs_switches_with_organization(gateway: Gateway) -> None:
    member = make_member(gateway, default=True)
    other = make_member(gateway)
    join(gateway, member, other.org_id)
    first = member.client().chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "a"}])
    second = member.client(organization=other.org_id).chat.completions.create(
        model="fake-small", messages=[{"role": "user", "content": "b"}])
    assert first.usage is not None and second.usage is not None
    mine = member.get("/v1/credits").json()
    theirs = member.get("/v1/credits", headers={"OpenAI-Organization": other.org_id}).json()
    assert mine["org_id"] == member.org_id and theirs["org_id"] == other.org_id
    assert mine["pool"]["balance"] < 100_000_000 and theirs["pool"]["balance"] < 100_000_000
    stranger = make_member(gateway)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        member.client(organization=stranger.org_id).chat.completions.create(
            model="fake-small", messages=[{"role": "user", "content": "c"}])
    assert caught.value.body["code"] == "not_a_member"


def test_request_ids_are_tracked_and_reuse_is_409(gateway: Gateway) -> None:
    member = make_member(gateway)
    client = member.client()
    client.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "x"}],
                                   extra_headers={"X-Request-Id": "dup-1"})
    with pytest.raises(openai.ConflictError) as caught:
        client.chat.completions.create(model="fake-small", messages=[{"role": "user", "content": "x"}],
                                       extra_headers={"X-Request-Id": "dup-1"})
    assert caught.value.body["code"] == "request_id_in_use"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.response.headers["x-request-id"] == "dup-1"
    assert settled(member, "dup-1")["status"] == "settled"
    generated = client.chat.completions.with_raw_response.create(
        model="fake-small", messages=[{"role": "user", "content": "y"}])
    assert generated.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tier", ["free", "starter", "professional", "enterprise"])
def test_exact_charge_for_each_power_level_and_tier(gateway: Gateway, tier: str, stream: bool) -> None:
    member = make_member(gateway, tier=tier)
    for level, (multiplier, model) in LEVELS.items():
        if tier == "free":
            if level not in FREE_AUTO:
                with pytest.raises(openai.PermissionDeniedError) as caught:
                    member.client().chat.completions.create(
                        model="auto", messages=[{"role": "user", "content": "q"}],
                        extra_headers={"X-Power-Level": level})
                assert caught.value.body["code"] == "model_not_allowed"
                continue
            model = FREE_AUTO[level]
            multiplier = LEVELS["balanced"][0] if model == "fake-gpt-4o-mini" else multiplier
        rid = f"lvl-{tier}-{level}-{int(stream)}"
        prompt, completion, charged_header = _call(member, rid, level, stream)
        charge = expected_charge(model, tier, multiplier, prompt, completion)
        record = settled(member, rid)
        assert (record["model"], record["charged_millicredits"], record["usage_source"]) == (model, charge, "provider")
        if not stream:
            assert charged_header == charge


def _call(member: Member, rid: str, level: str, stream: bool) -> tuple[int, int, int | None]:
    client = member.client()
    headers = {"X-Request-Id": rid, "X-Power-Level": level}
    messages = [{"role": "user", "content": f"price check for {level}"}]
    if not stream:
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages,
                                                               extra_headers=headers)
        usage = raw.parse().usage
        assert usage is not None
        return usage.prompt_tokens, usage.completion_tokens, int(raw.headers["x-credits-charged"])
    chunks = list(client.chat.completions.create(model="auto", messages=messages, extra_headers=headers,
                                                 stream=True, stream_options={"include_usage": True}))
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    return final.usage.prompt_tokens, final.usage.completion_tokens, None


def test_an_answer_without_usage_is_charged_from_what_was_answered(gateway: Gateway) -> None:
    """The provider sends no usage and LiteLLM answers usage {0, 0, 0}: the gateway charges the prompt it
    counted plus the answer's text, recorded as an estimate, never zero for served tokens."""
    member = make_member(gateway, tier="professional")
    raw = member.client().chat.completions.with_raw_response.create(
        model="fake-small", messages=[{"role": "user", "content": "no usage please"}],
        extra_headers={"X-Request-Id": "nousage-1"}, extra_body={"fake_no_usage": True, "fake_chunks": 12})
    assert "provider_specific_fields" not in raw.http_response.text
    record = settled(member, "nousage-1")
    assert record["usage_source"] == "estimate"
    assert record["prompt_tokens"] > 0 and record["completion_tokens"] >= 12
    charge = expected_charge("fake-small", "professional", Decimal("0.1"), record["prompt_tokens"],
                             record["completion_tokens"])
    assert int(raw.headers["x-credits-charged"]) == record["charged_millicredits"] == charge > 0
