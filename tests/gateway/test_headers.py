"""What crosses the gateway: the provider never sees the client's credentials or routing fields; the
client never sees LiteLLM's internals (cost, x-litellm-*, llm_provider-*, upstream addresses)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from devstack import services
from tests.gateway.conftest import Gateway, Provider, chat, new_request_id

SMUGGLED: dict[str, Any] = {
    "api_key": "sk-client-smuggled-key",
    "api_base": "http://127.0.0.1:9/v1",
    "base_url": "http://127.0.0.1:9/v1",
    "user_config": {"model_list": []},
    "extra_body": {"api_key": "sk-client-extra-body"},
    "mock_response": "free answer",
    "metadata": {"tags": ["x"]},
    "input_cost_per_token": 0,
    "litellm_logging_obj": "x",
    "fallbacks": ["fake-large"],
    "power_level": "eco",
    # LiteLLM would refuse these with a 401 (its banned body params): dropped, the call goes through
    "langfuse_host": "http://127.0.0.1:9", "tiered_pricing": [], "cost_per_second": 0, "aws_profile_name": "x",
    "callbacks": ["x"], "_router_weights": 1,
}


def test_provider_never_receives_client_credentials_or_routing(gateway: Gateway, provider: Provider) -> None:
    tag = f"filter-{new_request_id()}"
    with gateway.http() as http:
        resp = http.post("/v1/chat/completions", json=chat(fake_tag=tag, fake_chunks=2, user="u-1", **SMUGGLED),
                         headers={"authorization": "Bearer sk-client-secret-key", "x-trace-id": "t-1",
                                  "openai-organization": "org-x"})
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "Hello w1"  # not the mock_response
    seen = provider.request_tagged(tag)
    assert seen["headers"]["authorization"] == "Bearer sk-platform-upstream"
    assert not set(SMUGGLED) & set(seen["body"])
    assert seen["body"]["model"] == "fake-small" and seen["body"]["fake_chunks"] == 2
    assert "sk-client" not in str(seen)
    assert "x-trace-id" not in seen["headers"] and "openai-organization" not in seen["headers"]


def test_member_key_reaches_the_provider_and_stream_usage_is_always_requested(gateway: Gateway,
                                                                               provider: Provider) -> None:
    tag = f"byok-{new_request_id()}"
    with gateway.http() as http:
        resp = http.post("/v1/chat/completions", json=chat("byok-gpt", stream=True, fake_tag=tag, fake_chunks=2,
                                                           stream_options={"include_usage": False}),
                         headers={"x-test-byok": "sk-member-own-key"})
    assert resp.status_code == 200
    assert b'"usage"' not in resp.content
    seen = provider.request_tagged(tag)
    assert seen["headers"]["authorization"] == "Bearer sk-member-own-key"
    assert seen["body"]["stream_options"] == {"include_usage": True}


def test_client_never_sees_litellm_internals(gateway: Gateway, litellm: services.Service,
                                            fake_provider: services.Service) -> None:
    # an address names its port after a colon; a bare five digits could be part of a random id or a float
    ports = {f":{urlsplit(litellm.url).port}", f":{urlsplit(fake_provider.url).port}"}
    with gateway.http() as http:
        answers = [
            http.post("/v1/chat/completions", json=chat(fake_chunks=2)),
            http.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True})),
            http.post("/v1/embeddings", json={"model": "fake-embed", "input": "a b"}),
            http.post("/v1/chat/completions", json=chat(fake_status=400, fake_error="bad things")),
            http.get("/v1/models"),
        ]
    for resp in answers:
        names = {k.lower() for k in resp.headers}
        assert not {n for n in names if n.startswith(("x-litellm", "llm_provider"))}, names
        assert "x-request-id" in names
        assert not any(p in v for v in resp.headers.values() for p in ports), resp.headers
        assert not any(p in resp.text for p in ports)
        assert '"cost"' not in resp.text and "litellm" not in resp.text.lower()
    assert answers[0].headers["x-ratelimit-remaining-requests"] == "4999"  # OpenAI's headers pass
    assert answers[3].json() == {"error": {"message": "bad things", "type": "invalid_request_error",
                                           "param": None, "code": "invalid_value"}}


def test_models_come_from_litellm(gateway: Gateway) -> None:
    with gateway.http() as http:
        listing = http.get("/api/v1/llm/models")
        one = http.get("/v1/models/fake-small")
        missing = http.get("/v1/models/no-such-model")
    assert listing.status_code == 200
    assert {"fake-small", "fake-multi", "fake-embed"} <= {m["id"] for m in listing.json()["data"]}
    assert one.json()["id"] == "fake-small"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_request_ids(gateway: Gateway) -> None:
    with gateway.http() as http:
        kept = http.post("/v1/chat/completions", json=chat(), headers={"x-request-id": "abc.DEF_1:2-3"})
        spaced = http.post("/v1/chat/completions", json=chat(), headers={"x-request-id": "has space"})
        long = http.post("/v1/chat/completions", json=chat(), headers={"x-request-id": "a" * 65})
        none = httpx.get(f"{gateway.url}/healthz")
    assert kept.headers["x-request-id"] == "abc.DEF_1:2-3"
    for resp in (spaced, long, none):
        rid = resp.headers["x-request-id"]
        assert rid.startswith("req_") and len(rid) == 28 and int(rid[4:], 16) >= 0
    assert gateway.probe.context(spaced.headers["x-request-id"]).request_id != "has space"
