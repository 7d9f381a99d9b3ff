"""The attacks of issue 7 through the real stack (gateway, LiteLLM 1.106.2, the fake provider, PostgreSQL),
kept as regression tests: what the provider receives is what the allowlist lets through, under the
cap the hold was sized from, with the platform's headers only; bad input is the contract's 4xx and
holds nothing."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import orjson
import pytest

from devstack import services
from tests.e2e.conftest import Gateway, Member, make_member
from tests.e2e.test_billing import settled

PROVIDER_KEY = "sk-platform-upstream"  # litellm_config.yaml's key for the fake provider's deployments


def marker() -> str:
    return "mark-" + secrets.token_hex(6)


def provider_saw(fake_provider: services.Service, mark: str) -> list[dict[str, Any]]:
    """The requests the fake provider received whose JSON body carries `mark`."""
    seen = httpx.get(f"{fake_provider.url}/_requests", timeout=10).json()
    return [r for r in seen if mark in orjson.dumps(r["body"]).decode()]


def error(code: str, param: str | None, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"type": type_, "param": param, "code": code}


def shape(response: httpx.Response) -> dict[str, Any]:
    body = response.json()["error"]
    assert isinstance(body["message"], str) and body["message"]
    return {k: body[k] for k in ("type", "param", "code")}


def credits(member: Member) -> dict[str, Any]:
    response = member.get("/v1/credits")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def chat(mark: str, **fields: Any) -> dict[str, Any]:
    return {"model": "fake-small", "messages": [{"role": "user", "content": f"hello {mark}"}], **fields}


@pytest.mark.parametrize("stream", [False, True])
def test_additional_drop_params_cannot_lift_the_output_cap(gateway: Gateway, fake_provider: services.Service,
                                                           stream: bool) -> None:
    """Issue 7.1: LiteLLM honours per-request `additional_drop_params`, which deleted the clamped
    max_tokens (held 56,273, charged 560,007). Refused before anything is held or sent."""
    member = make_member(gateway, credit=60_000)
    mark = marker()
    with member.http() as http:
        response = http.post("/v1/chat/completions", json=chat(
            mark, model="fake-medium", max_tokens=40_000, stream=stream, fake_chunks=40_000,
            additional_drop_params=["max_tokens"]))
    assert response.status_code == 400
    assert shape(response) == error("invalid_value", "additional_drop_params")
    assert provider_saw(fake_provider, mark) == []
    pool = credits(member)["pool"]
    assert (pool["balance"], pool["held"], pool["available"]) == (60_000, 0, 60_000)


@pytest.mark.parametrize("stream", [False, True])
def test_the_provider_never_receives_a_cap_above_the_power_levels(gateway: Gateway, fake_provider: services.Service,
                                                                  stream: bool) -> None:
    """Eco caps output at 2,000 tokens: asked for 50,000 and a provider willing to stream 5,000, the
    provider is sent 2,000, streams 2,000, and the charge is within the hold."""
    member = make_member(gateway)
    mark = marker()
    rid = f"cap-{stream}-{mark}"
    with member.http() as http:
        response = http.post("/v1/chat/completions", json=chat(
            mark, max_tokens=50_000, max_completion_tokens=60_000, stream=stream, fake_chunks=5_000),
            headers={"x-power-level": "eco", "x-request-id": rid})
        assert response.status_code == 200, response.text
    [sent] = provider_saw(fake_provider, mark)
    assert sent["body"]["max_tokens"] == 2_000
    assert sent["body"].get("max_completion_tokens", 2_000) == 2_000
    record = settled(member, rid)
    assert record["completion_tokens"] == 2_000
    assert record["usage_source"] == "provider"
    assert 0 < record["charged_millicredits"] <= record["held_millicredits"]


def test_no_client_header_or_body_field_becomes_a_provider_header(gateway: Gateway,
                                                                   fake_provider: services.Service) -> None:
    """Issue 7.2: `headers` and `provider_specific_header` reached the provider as HTTP headers (a client
    Authorization replaced the platform key; Host, Cookie and Content-Length went through)."""
    member = make_member(gateway)
    mark = marker()
    attack = {"Authorization": "Bearer sk-attacker", "Host": "attacker.invalid", "Cookie": "session=stolen",
              "Content-Length": "5", "X-Attack": mark}
    body = chat(mark, headers=attack, extra_headers=attack,
                provider_specific_header={"custom_llm_provider": "openai", "extra_headers": attack})
    with member.http() as http:
        response = http.post("/v1/chat/completions", json=body,
                             headers={"cookie": "client=1", "x-forwarded-for": "203.0.113.9", "x-attack": mark,
                                      "openai-organization": member.org_id})
    assert response.status_code == 200, response.text
    [sent] = provider_saw(fake_provider, mark)
    headers = sent["headers"]
    assert headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert "cookie" not in headers and "x-attack" not in headers and "x-forwarded-for" not in headers
    assert headers["host"] == fake_provider.url.removeprefix("http://")
    assert int(headers["content-length"]) > 5
    assert mark not in orjson.dumps(headers).decode()
    assert not {"headers", "extra_headers", "provider_specific_header"} & set(sent["body"])
    assert sent["body"]["messages"] == body["messages"]


def test_an_unknown_field_is_400_naming_it_and_holds_nothing(gateway: Gateway, fake_provider: services.Service) -> None:
    member = make_member(gateway, credit=50_000)
    mark = marker()
    with member.http() as http:
        unknown = http.post("/v1/chat/completions", json=chat(mark, frobnicate=True))
        web_search = http.post("/v1/chat/completions", json=chat(mark, web_search_options={}))
        audio = http.post("/v1/chat/completions", json=chat(mark, modalities=["text", "audio"]))
        priority = http.post("/v1/chat/completions", json=chat(mark, service_tier="priority"))
        option = http.post("/v1/chat/completions", json=chat(mark, stream=True,
                                                             stream_options={"include_usage": True, "x": 1}))
        embed = http.post("/v1/embeddings", json={"model": "fake-embed", "input": mark, "temperature": 0.5})
    assert [(r.status_code, shape(r)) for r in (unknown, web_search, audio, priority, option, embed)] == [
        (400, error("invalid_value", "frobnicate")),
        (400, error("invalid_value", "web_search_options")),
        (400, error("invalid_value", "modalities")),
        (400, error("invalid_value", "service_tier")),
        (400, error("invalid_value", "stream_options.x")),
        (400, error("invalid_value", "temperature")),
    ]
    assert provider_saw(fake_provider, mark) == []
    pool = credits(member)["pool"]
    assert (pool["balance"], pool["held"]) == (50_000, 0)


def test_credential_and_routing_fields_are_dropped_silently(gateway: Gateway, fake_provider: services.Service) -> None:
    member = make_member(gateway)
    mark = marker()
    with member.http() as http:
        response = http.post("/v1/chat/completions", json=chat(
            mark, api_key="sk-attacker", api_base="http://127.0.0.1:9/", metadata={"tags": ["x"]},
            mock_response="free", user_config={"model_list": []}, litellm_metadata={"a": 1},
            input_cost_per_token=0, tags=["paid-by-someone-else"]))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].startswith("Hello")
    [sent] = provider_saw(fake_provider, mark)
    assert sent["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert not {"api_key", "api_base", "metadata", "mock_response", "user_config", "input_cost_per_token"} & set(
        sent["body"])


def test_authentication_comes_before_the_body(gateway: Gateway) -> None:
    """Issue 7.7: an unknown key got 400 for a malformed body instead of 401; an oversized body from a
    stranger is refused without being read."""
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        stranger = {"authorization": "Bearer sk-cg-not-a-key", "content-type": "application/json"}
        malformed = http.post("/v1/chat/completions", content=b"{not json", headers=stranger)
        empty = http.post("/v1/chat/completions", content=b"", headers=stranger)
        huge = http.post("/v1/chat/completions", content=b"x" * (20 * 1024 * 1024), headers=stranger)
        missing = http.post("/v1/embeddings", content=b"[]", headers={"content-type": "application/json"})
    for response in (malformed, empty, huge, missing):
        assert response.status_code == 401
        assert shape(response) == error("invalid_api_key", None, "authentication_error")
        assert response.headers["x-request-id"]
    member = make_member(gateway)
    with member.http() as http:
        bad = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
        large = http.post("/v1/chat/completions", content=b"x" * (17 * 1024 * 1024))
    assert (bad.status_code, shape(bad)) == (400, error("invalid_json", None))
    assert (large.status_code, shape(large)) == (413, error("body_too_large", None))


def test_a_trailing_slash_is_404_never_a_redirect(gateway: Gateway) -> None:
    member = make_member(gateway)
    with member.http() as http:
        for path in ("/v1/chat/completions/", "/api/v1/llm/embeddings/", "/v1/credits/", "/admin/orgs/"):
            response = http.post(path, json=chat(marker()), headers={"host": "attacker.invalid"}) \
                if path.startswith("/v1/chat") else http.get(path, headers={"host": "attacker.invalid"})
            assert response.status_code == 404, path
            assert "location" not in response.headers
            assert shape(response) == error("route_not_found", None, "not_found_error")
        models = http.get("/v1/models/", headers={"host": "attacker.invalid"})
    assert models.status_code == 404 and "location" not in models.headers
    assert models.headers["content-type"] == "application/json"


def test_input_that_used_to_crash_is_a_400(gateway: Gateway, fake_provider: services.Service) -> None:
    """Issue 7.6: JSON nested ~500 deep in `tools` (RecursionError in the token counter), images with
    n = 10^15 (overflows in the driver), a NUL byte in a path."""
    member = make_member(gateway, credit=1_000_000)
    deep = '{"type": "object", "properties": {"a": ' * 500 + '{"type": "string"}' + "}}" * 500
    deeper = "[" * 5000 + "]" * 5000
    mark = marker()
    with member.http() as http:
        tools = b'[{"type": "function", "function": {"name": "f", "parameters": ' + deep.encode() + b"}}]"
        nested = http.post("/v1/chat/completions", content=orjson.dumps(chat(mark, tools="TOOLS")).replace(
            b'"TOOLS"', tools), headers={"content-type": "application/json"})
        too_deep = http.post("/v1/chat/completions", content=deeper.encode(),
                             headers={"content-type": "application/json"})
        images = http.post("/v1/images/generations", json={"model": "fake-image", "prompt": mark, "n": 10**15})
        many = http.post("/v1/chat/completions", json=chat(mark, n=10**6))
        huge_int = http.post("/v1/chat/completions", content=orjson.dumps(chat(mark))[:-1] + b', "seed": 1'
                             + b"0" * 40 + b"}", headers={"content-type": "application/json"})
        nul = http.get("/v1/models/fake%00small")
    assert (nested.status_code, shape(nested)) == (400, error("invalid_value", None))
    assert too_deep.status_code == 400 and shape(too_deep)["code"] in ("invalid_json", "invalid_value")
    assert (images.status_code, shape(images)) == (400, error("invalid_value", "n"))
    assert (many.status_code, shape(many)) == (400, error("invalid_value", "n"))
    assert (huge_int.status_code, shape(huge_int)) == (400, error("invalid_value", "seed"))
    assert nul.status_code == 404 and nul.headers["content-type"] == "application/json"
    assert provider_saw(fake_provider, mark) == []
    assert credits(member)["pool"]["held"] == 0


def test_an_org_without_credit_is_refused_before_its_large_prompt_is_counted(gateway: Gateway) -> None:
    """Issue 7.7: an org with no credit made the gateway tokenize a 14 MB prompt before its 402. The
    refusal now comes from the balance check that runs before counting (its message says "at least")."""
    broke = make_member(gateway, credit=None)
    prompt = " ".join(f"w{i}" for i in range(1_500_000))  # ~12 MB
    with broke.http() as http:
        response = http.post("/v1/chat/completions", json=chat("broke", messages=[{"role": "user",
                                                                                   "content": prompt}]))
    assert (response.status_code, shape(response)) == (402, error("org_pool_exhausted", None,
                                                                  "insufficient_credits"))
    assert "at least" in response.json()["error"]["message"]
    capped = make_member(gateway, allocation=10, period="month")
    with capped.http() as http:
        response = http.post("/v1/chat/completions", json=chat("capped", messages=[{"role": "user",
                                                                                    "content": prompt}]))
    assert (response.status_code, shape(response)) == (402, error("user_allocation_exhausted", None,
                                                                  "insufficient_credits"))
    assert "at least" in response.json()["error"]["message"]
