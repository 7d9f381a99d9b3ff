"""BYOK end to end: recorded but not charged, and one member's rejected key blocks nobody else."""

from __future__ import annotations

import math
from decimal import Decimal

import httpx
import openai
import pytest

from devstack import services
from tests.e2e.conftest import Gateway, Member, make_member
from tests.e2e.test_billing import settled


def store_key(member: Member, api_key: str, scope: str = "user") -> httpx.Response:
    with member.http() as http:
        return http.post("/v1/byok/keys", json={"provider": "openai", "api_key": api_key, "scope": scope})


def seen_authorizations(provider: services.Service, model: str) -> list[str]:
    requests = httpx.get(f"{provider.url}/_requests").json()
    return [r["headers"].get("authorization", "") for r in requests if r.get("body", {}).get("model") == model]


def test_byok_is_recorded_with_its_list_price_and_charges_nothing(gateway: Gateway,
                                                                 fake_provider: services.Service) -> None:
    member = make_member(gateway, tier="enterprise")
    assert store_key(member, "sk-member-own-key-0001").status_code in (200, 201)
    raw = member.client().chat.completions.with_raw_response.create(
        model="byok-gpt", messages=[{"role": "user", "content": "mine"}], extra_headers={"X-Request-Id": "byok-1"})
    usage = raw.parse().usage
    assert usage is not None
    assert raw.headers["x-credits-charged"] == "0"
    record = settled(member, "byok-1")
    list_price = math.ceil((usage.prompt_tokens * Decimal("0.0000025") + usage.completion_tokens
                            * Decimal("0.00001")) * 1000 * 1000)
    assert (record["byok"], record["charged_millicredits"], record["list_price_millicredits"]) == (True, 0, list_price)
    assert member.get("/v1/credits").json()["pool"]["balance"] == 100_000_000
    assert seen_authorizations(fake_provider, "byok-gpt")[-1] == "Bearer sk-member-own-key-0001"


def test_required_byok_model_without_a_key_is_refused_before_forwarding(gateway: Gateway) -> None:
    member = make_member(gateway, tier="enterprise")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        member.client().chat.completions.create(model="byok-only", messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["code"] == "byok_key_required"


def test_a_rejected_member_key_does_not_block_another_member(gateway: Gateway) -> None:
    bad = make_member(gateway, tier="enterprise")
    good = make_member(gateway, tier="enterprise")
    store_key(bad, "sk-reject-this-key-9999")
    store_key(good, "sk-member-valid-key-4242")
    for stream in (False, True):
        with pytest.raises(openai.AuthenticationError) as caught:
            resp = bad.client().chat.completions.create(
                model="byok-only", messages=[{"role": "user", "content": "x"}], stream=stream)
            if stream:
                list(resp)  # type: ignore[arg-type]
        assert caught.value.body["code"] == "byok_key_rejected"
        assert "sk-reject" not in str(caught.value.body)
        # a moment later, the same model still serves a member whose key is valid (no cooldown)
        answer = good.client().chat.completions.create(model="byok-only", messages=[{"role": "user", "content": "y"}])
        assert answer.choices[0].message.content
    assert bad.get("/v1/credits").json()["pool"]["held"] == 0
