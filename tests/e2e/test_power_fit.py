"""`auto` that fits the task and downgrade instead of 402, through `creditgate serve`, the real LiteLLM and
the fake provider. The gateway runs a policy file whose precision level lists fake-small (cheapest, no
model info capabilities) before fake-gpt-4o-mini (LiteLLM's cost map says gpt-4o-mini supports vision),
and a tier whose policy is to downgrade. Expected charges are the contract's formula over the prices of
litellm_config.yaml, independent of the gateway's code."""

from __future__ import annotations

import math
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from devstack import services
from tests.e2e.conftest import Gateway, Member, make_member, start_gateway
from tests.e2e.test_billing import settled

PRICES = {"fake-small": (Decimal("0.00000005"), Decimal("0.0000001")),
          "fake-gpt-4o-mini": (Decimal("0.00000015"), Decimal("0.0000006"))}
STARTER = Decimal("0.4")
IMAGE = [{"role": "user", "content": [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]
TEXT = [{"role": "user", "content": "Say hello."}]


def charge(model: str, multiplier: Decimal, prompt: int, completion: int) -> int:
    price_in, price_out = PRICES[model]
    return math.ceil((prompt * price_in + completion * price_out) * 1000 * 1000 * (1 + STARTER) * multiplier)


@pytest.fixture(scope="module")
def fit_gateway(pg: services.Service, redis_server: services.Service, litellm: services.Service,
                fake_provider: services.Service) -> Iterator[Gateway]:
    text = (services.ROOT / "policy.yaml").read_text()
    precision = next(line for line in text.splitlines() if line.startswith("  precision:"))
    text = text.replace(precision, "  precision: {multiplier: 1.0,  max_tokens: 16000, "
                                   "models: [fake-small, fake-gpt-4o-mini, fake-large]}")
    starter = next(line for line in text.splitlines() if line.startswith("  starter:"))
    text = text.replace(starter, starter + '\n  keen:         {markup: 0.4, models: ["*"], downgrade: true}')
    path = services.scratch("powerfit-") / "policy.yaml"
    path.write_text(text)
    gw = start_gateway(pg, redis_server, litellm, fake_provider, name="powerfit", policy=path)
    yield gw
    gw.stop()


def post(member: Member, body: dict[str, Any], **headers: str) -> httpx.Response:
    with member.http() as http:
        return http.post("/v1/chat/completions", json=body, headers=headers)


def test_auto_picks_a_vision_model_for_an_image_and_the_cheapest_for_text(fit_gateway: Gateway) -> None:
    member = make_member(fit_gateway)
    text = post(member, {"model": "auto", "messages": TEXT}, **{"x-power-level": "precision"})
    assert text.status_code == 200, text.text
    assert text.json()["model"].endswith("fake-small")
    assert text.headers["x-power-level-served"] == "precision"
    image = post(member, {"model": "auto", "messages": IMAGE},
                 **{"x-power-level": "precision", "x-request-id": "vis-1"})
    assert image.status_code == 200, image.text
    record = member.get("/v1/requests/vis-1").json()
    assert record["model"] == "fake-gpt-4o-mini"
    usage = image.json()["usage"]
    assert int(image.headers["x-credits-charged"]) == charge(
        "fake-gpt-4o-mini", Decimal("1.0"), usage["prompt_tokens"], usage["completion_tokens"])


def test_auto_with_no_model_that_supports_the_request_is_400(fit_gateway: Gateway) -> None:
    member = make_member(fit_gateway)
    answer = post(member, {"model": "auto", "messages": IMAGE}, **{"x-power-level": "eco", "x-request-id": "vis-2"})
    assert answer.status_code == 400
    assert answer.json() == {"error": {
        "message": "No eco model available to your organization supports image inputs.",
        "type": "invalid_request_error", "param": "model", "code": "invalid_value"}}
    assert answer.headers["x-request-id"] == "vis-2"
    assert member.get("/v1/requests/vis-2").status_code == 404
    assert member.get("/v1/credits").json()["pool"]["held"] == 0


def test_models_say_which_levels_list_them(fit_gateway: Gateway) -> None:
    member = make_member(fit_gateway)
    listed = {m["id"]: m["power_levels"] for m in member.get("/v1/models").json()["data"]}
    assert listed["fake-small"] == ["eco", "precision"]
    assert listed["fake-gpt-4o-mini"] == ["balanced", "precision"]
    assert listed["fake-embed"] == []
    assert member.get("/v1/models/fake-medium").json()["power_levels"] == ["balanced"]
    categorized = member.get("/v1/models/categorized").json()
    assert {m["id"]: m["power_levels"] for m in categorized["platform"]}["mock-gpt"] == ["eco"]


def _poor_member(gw: Gateway, tier: str = "starter") -> Member:
    """A pool of 300 millicredits: balanced's hold (fake-gpt-4o-mini, 4,000 tokens of output, about 850)
    does not fit, eco's (fake-small, 2,000 tokens, about 30) does."""
    member = make_member(gw, tier=tier, credit=None)
    gw.admin.grant(member.org_id, 300)
    return member


@pytest.mark.parametrize("stream", [False, True])
def test_downgrade_when_asked_serves_at_eco_with_the_exact_eco_charge(fit_gateway: Gateway, stream: bool) -> None:
    member = _poor_member(fit_gateway)
    rid = f"down-{int(stream)}"
    body: dict[str, Any] = {"model": "auto", "messages": TEXT, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    answer = post(member, body, **{"x-power-level": "balanced", "x-power-fallback": "downgrade", "x-request-id": rid})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-power-level-served"] == "eco"
    record = settled(member, rid)
    assert record["status"] == "settled" and record["model"] == "fake-small"
    expected = charge("fake-small", Decimal("0.1"), record["prompt_tokens"], record["completion_tokens"])
    assert record["charged_millicredits"] == expected
    if not stream:
        assert int(answer.headers["x-credits-charged"]) == expected
        assert answer.json()["usage"]["completion_tokens"] == record["completion_tokens"]
    assert member.get("/v1/credits").json()["pool"] == {"balance": 300 - expected, "held": 0,
                                                        "available": 300 - expected}


def test_without_the_header_the_402_stays_and_nothing_is_held(fit_gateway: Gateway) -> None:
    member = _poor_member(fit_gateway)
    for headers in ({}, {"x-power-fallback": "none"}):
        answer = post(member, {"model": "auto", "messages": TEXT},
                      **{"x-power-level": "balanced", "x-request-id": "nodown-1", **headers})
        assert answer.status_code == 402
        assert answer.json()["error"]["code"] == "org_pool_exhausted"
        assert "x-power-level-served" not in answer.headers
    assert member.get("/v1/requests/nodown-1").status_code == 404
    assert member.get("/v1/credits").json()["pool"] == {"balance": 300, "held": 0, "available": 300}


def test_a_tier_whose_policy_is_to_downgrade_does_so_without_the_header(fit_gateway: Gateway) -> None:
    member = _poor_member(fit_gateway, tier="keen")
    answer = post(member, {"model": "auto", "messages": TEXT}, **{"x-power-level": "balanced"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-power-level-served"] == "eco"
    refused = post(member, {"model": "auto", "messages": TEXT},
                   **{"x-power-level": "balanced", "x-power-fallback": "none"})
    assert refused.status_code == 402


@pytest.mark.parametrize("value", ["sideways", "downgrade, none", "1"])
def test_a_bad_fallback_header_is_400_on_every_billed_route(fit_gateway: Gateway, value: str) -> None:
    member = make_member(fit_gateway)
    expected = {"error": {"message": "X-Power-Fallback must be 'downgrade' or 'none'.",
                          "type": "invalid_request_error", "param": "X-Power-Fallback", "code": "invalid_value"}}
    with member.http() as http:
        for path, body in (("/v1/chat/completions", {"model": "auto", "messages": TEXT}),
                           ("/api/v1/llm/completions", {"model": "fake-small", "prompt": "x"}),
                           ("/v1/embeddings", {"model": "fake-embed", "input": "x"})):
            answer = http.post(path, json=body, headers={"x-power-fallback": value})
            assert (answer.status_code, answer.json()) == (400, expected), path
    assert member.get("/v1/credits").json()["pool"]["held"] == 0
