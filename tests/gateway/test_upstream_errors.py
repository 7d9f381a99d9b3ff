"""LiteLLM and network failures, translated in one place (proxy/gateway/upstream_errors.py)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from devstack import services
from proxy.config.settings import Secret
from proxy.gateway.context import RequestContext
from proxy.gateway.upstream_errors import from_litellm, scrub
from tests.gateway.conftest import Gateway, GatewayFactory, chat, new_request_id


def error(status: int, type_: str, code: str, message: str, param: str | None = None) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": type_, "param": param, "code": code}}


def post(gateway: Gateway, body: dict[str, Any], **headers: str) -> httpx.Response:
    with gateway.http() as http:
        return http.post("/v1/chat/completions", json=body, headers=headers)


def test_upstream_down_is_502_unreachable(start_gateway: GatewayFactory) -> None:
    down = start_gateway(f"http://127.0.0.1:{services.free_port()}")
    rid = new_request_id()
    resp = post(down, chat(), **{"x-request-id": rid})
    assert (resp.status_code, resp.json()) == error(502, "upstream_error", "upstream_unreachable",
                                                    "The model service is unreachable.")
    assert resp.headers["x-request-id"] == rid
    ctx = down.probe.context(rid)
    assert ctx.failure == "upstream_unreachable" and ctx.upstream_status is None


def test_slow_upstream_is_504(start_gateway: GatewayFactory, litellm: services.Service) -> None:
    slow = start_gateway(litellm.url, upstream_timeout_seconds=0.5)
    rid = new_request_id()
    resp = post(slow, chat(fake_chunks=2, fake_delay_ms=1000), **{"x-request-id": rid})
    assert (resp.status_code, resp.json()) == error(504, "upstream_error", "upstream_timeout",
                                                    "The model service did not answer in time.")
    assert slow.probe.context(rid).failure == "upstream_timeout"


def test_bad_model_is_404(gateway: Gateway) -> None:
    for stream in (False, True):
        resp = post(gateway, chat("no-such-model", stream=stream))
        assert (resp.status_code, resp.json()) == error(404, "not_found_error", "model_not_found",
                                                        "The model 'no-such-model' does not exist.")


def test_wrong_platform_key_is_502_never_401(start_gateway: GatewayFactory, litellm: services.Service) -> None:
    wrong = start_gateway(litellm.url, upstream_key=Secret("sk-not-the-master-key"))
    resp = post(wrong, chat())
    assert (resp.status_code, resp.json()) == error(502, "upstream_error", "upstream_failed",
                                                    "The model service failed to answer.")


def test_rejected_member_key_is_401_and_platform_rejection_is_502(gateway: Gateway) -> None:
    for stream in (False, True):
        rid = new_request_id()
        resp = post(gateway, chat("byok-gpt", stream=stream), **{"x-test-byok": "sk-reject-me", "x-request-id": rid})
        assert (resp.status_code, resp.json()) == error(
            401, "authentication_error", "byok_key_rejected",
            "The provider 'openai' rejected your own API key (BYOK). Check or replace the key.")
        assert gateway.probe.context(rid).failure == "byok_key_rejected"
        assert gateway.probe.context(rid).upstream_status == 401
    # the same provider 401 for a key the member did not bring is the platform's problem
    resp = post(gateway, chat("fake-small"), **{"x-test-platform-key": "sk-reject-platform"})
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "upstream_failed"


def test_provider_errors(gateway: Gateway) -> None:
    limited = post(gateway, chat(fake_status=429))
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert limited.headers["retry-after"].isdigit()
    bad = post(gateway, chat(fake_status=400, fake_error="context too long for model openai/fake-small"))
    assert (bad.status_code, bad.json()) == error(400, "invalid_request_error", "invalid_value",
                                                  "context too long for model [deployment]")
    for status in (500, 503, 404):
        resp = post(gateway, chat(fake_status=status))
        assert (resp.status_code, resp.json()) == error(502, "upstream_error", "upstream_failed",
                                                        "The model service failed to answer.")
    died = post(gateway, chat(fake_fail_after=0))
    assert died.status_code == 502 and died.json()["error"]["code"] == "upstream_failed"


def test_translation_table() -> None:
    def ctx(**kw: Any) -> RequestContext:
        return RequestContext(request_id="r", route="chat/completions", headers={}, body={"model": "m"}, **kw)

    def body(type_: str, message: str = "x", param: Any = "None", code: str = "400") -> bytes:
        return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})

    assert from_litellm(400, body("no_db_connection", "No connected db."), {}, ctx()).code == "upstream_failed"
    assert from_litellm(422, body("budget_exceeded", "Budget has been exceeded!"), {}, ctx()).code == "upstream_failed"
    assert from_litellm(401, body("auth_error", "Authentication Error"), {}, ctx(byok=True)).code == "upstream_failed"
    assert from_litellm(401, body("authentication_error"), {}, ctx(byok=True)).code == "byok_key_rejected"
    assert from_litellm(401, body("authentication_error"), {}, ctx()).code == "upstream_failed"
    assert from_litellm(403, body("permission_error"), {}, ctx()).status == 502
    assert from_litellm(408, body("timeout"), {}, ctx()).code == "upstream_timeout"
    assert from_litellm(504, b"gateway timeout", {}, ctx()).code == "upstream_timeout"
    limited = from_litellm(429, body("throttling_error"), {"retry-after": "12"}, ctx())
    assert (limited.status, limited.headers) == (429, {"retry-after": "12"})
    invalid = from_litellm(400, body("invalid_request_error", "bad", param="None"), {}, ctx())
    assert (invalid.status, invalid.code, invalid.param) == (400, "invalid_value", None)
    assert from_litellm(502, b"<html>", {}, ctx()).code == "upstream_failed"
    assert scrub("litellm.BadRequestError: OpenAIException - Error code: 400 at http://10.0.0.5:4000/v1 "
                 "key sk-platform-upstream\n\nLiteLLM: model group 'fake-small' failed") == (
        "Error code: 400 at [url] key sk-***")
