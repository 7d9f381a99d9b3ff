"""The access line: one JSON object per request, written when the request is finished (a stream's after its
settlement): who (org, user, key id), what (model asked and served, power level, stream), the outcome
(status, the contract's error code), the money (held, charged, usage source) and the time (upstream,
gateway); the start-up line; never a secret."""

from __future__ import annotations

import time
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.app import create_app
from tests.e2e.conftest import make_member
from tests.gateway.conftest import Gateway, chat, make_settings
from tests.ops.conftest import Product


def test_access_line_is_json_without_secrets(gateway: Gateway, capfd: pytest.CaptureFixture[str]) -> None:
    with gateway.http() as http:
        http.post("/v1/chat/completions?token=sk-in-query", json=chat(fake_chunks=1),
                  headers={"authorization": "Bearer sk-client-secret-in-log-test", "x-request-id": "log-line-1",
                           "x-test-byok": "sk-member-secret-in-log-test"})
    err, deadline = "", time.monotonic() + 10
    while '"logger":"creditgate.access"' not in err and time.monotonic() < deadline:
        time.sleep(0.02)  # the access line is written when the response has ended, after cleanup
        err += capfd.readouterr().err
    lines = [orjson.loads(line) for line in err.splitlines() if "log-line-1" in line]
    access = [line for line in lines if line["logger"] == "creditgate.access"]
    assert len(access) == 1
    line = access[0]
    assert {k: line[k] for k in ("request_id", "route", "status", "model", "method")} == {
        "request_id": "log-line-1", "route": "/v1/chat/completions", "status": 200, "model": "fake-small",
        "method": "POST"}
    assert isinstance(line["duration_ms"], float)
    assert "sk-" not in str(lines)


async def test_a_bug_in_a_route_is_the_contracts_json_with_the_request_id() -> None:
    """An unexpected exception would be Starlette's text/plain 500: the access middleware answers it."""

    async def broken(_: Request) -> Response:
        raise RuntimeError("a bug, with sk-secret-in-the-message")

    app = create_app(make_settings("http://127.0.0.1:9"), policies=(), routes=[Route("/broken", broken)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        answer = await client.get("/broken", headers={"x-request-id": "bug-1"})
    assert (answer.status_code, answer.headers["content-type"], answer.headers["x-request-id"]) == (
        500, "application/json", "bug-1")
    assert answer.json() == {"error": {"message": "The gateway failed to process the request.",
                                       "type": "server_error", "param": None, "code": "internal_error"}}


# ------------------------------------------------------------------ billed requests through `creditgate serve`


def billed(**extra: Any) -> dict[str, Any]:
    return {"model": "fake-small", "messages": [{"role": "user", "content": "hello there"}], "fake_chunks": 3,
            "max_tokens": 50, **extra}


def test_the_access_line_of_a_settled_request_says_who_what_and_how_much(product: Product) -> None:
    member = make_member(product.gw)
    with member.http() as http:
        answer = http.post("/v1/chat/completions", json=billed(), headers={"x-request-id": "acc-plain-1",
                                                                           "x-power-level": "eco"})
    assert answer.status_code == 200
    line = product.access("acc-plain-1")
    record = member.get("/v1/requests/acc-plain-1").json()
    assert {k: line[k] for k in ("method", "route", "status", "org_id", "user_id", "key_id", "model", "model_served",
                                 "power_level", "stream", "prompt_tokens", "completion_tokens", "held_millicredits",
                                 "charged_millicredits", "usage_source", "settlement")} == {
        "method": "POST", "route": "/v1/chat/completions", "status": 200, "org_id": member.org_id,
        "user_id": member.user_id, "key_id": member.key_id, "model": "fake-small", "model_served": "fake-small",
        "power_level": "eco", "stream": False, "prompt_tokens": record["prompt_tokens"],
        "completion_tokens": record["completion_tokens"], "held_millicredits": int(answer.headers["x-credits-held"]),
        "charged_millicredits": int(answer.headers["x-credits-charged"]), "usage_source": "provider",
        "settlement": "posted"}
    assert record["charged_millicredits"] == line["charged_millicredits"] > 0
    assert "error" not in line and len(line["trace_id"]) == 32 and line["deployment"]
    assert line["upstream_ms"] > 0 and line["gateway_ms"] > 0 and line["duration_ms"] >= line["upstream_ms"]


def test_a_streams_line_is_written_once_it_ended_and_settled(product: Product) -> None:
    member = make_member(product.gw)
    with member.http() as http:
        answer = http.post("/v1/chat/completions", json=billed(model="auto", stream=True, fake_chunks=6),
                           headers={"x-request-id": "acc-stream-1"})
    assert answer.status_code == 200 and "x-credits-charged" not in answer.headers
    line = product.access("acc-stream-1")
    record = member.get("/v1/requests/acc-stream-1").json()
    assert record["status"] == "settled"
    assert {k: line[k] for k in ("model", "model_served", "stream", "completion_tokens", "charged_millicredits",
                                 "usage_source", "settlement")} == {
        "model": "auto", "model_served": record["model"], "stream": True,
        "completion_tokens": record["completion_tokens"], "charged_millicredits": record["charged_millicredits"],
        "usage_source": "provider", "settlement": "posted"}


def test_a_402_says_whether_the_pool_or_the_allocation_ran_out(product: Product) -> None:
    empty_pool = make_member(product.gw, credit=None)
    tight = make_member(product.gw, allocation=1)
    for member, request_id in ((empty_pool, "acc-402-pool"), (tight, "acc-402-allocation")):
        with member.http() as http:
            assert http.post("/v1/chat/completions", json=billed(),
                             headers={"x-request-id": request_id}).status_code == 402
    pool, allocation = product.access("acc-402-pool"), product.access("acc-402-allocation")
    assert (pool["status"], pool["error"], pool["org_id"]) == (402, "org_pool_exhausted", empty_pool.org_id)
    assert (allocation["status"], allocation["error"], allocation["user_id"]) == (
        402, "user_allocation_exhausted", tight.user_id)
    assert "held_millicredits" not in pool and "charged_millicredits" not in pool and "upstream_ms" not in pool


def test_errors_of_the_json_routes_carry_their_code(product: Product) -> None:
    member = make_member(product.gw)
    assert member.get("/v1/requests/acc-nowhere", headers={"x-request-id": "acc-404"}).status_code == 404
    assert httpx.get(f"{product.gw.url}/v1/credits", headers={"x-request-id": "acc-401"}).status_code == 401
    assert httpx.delete(f"{product.gw.url}/readyz", headers={"x-request-id": "acc-405"}).status_code == 404
    assert [product.access(r)["error"] for r in ("acc-404", "acc-401", "acc-405")] == [
        "request_not_found", "invalid_api_key", "route_not_found"]


def test_the_start_up_line_and_no_secret_anywhere(product: Product) -> None:
    member = make_member(product.gw)
    with member.http() as http:
        http.post("/v1/chat/completions", json=billed(api_key="sk-client-sneaky-in-body"),
                  headers={"x-request-id": "acc-secret"})
        http.post("/v1/byok/keys", json={"provider": "openai", "api_key": "sk-byok-secret-in-log-test-77"})
    product.access("acc-secret")
    started = [line for line in product.log_lines() if line.get("msg") == "creditgate started"]
    assert len(started) == 1
    line = started[0]
    assert {k: line[k] for k in ("version", "host", "port", "workers", "tracing")} == {
        "version": metadata.version("creditgate"), "host": "127.0.0.1", "port": product.gw.svc.port, "workers": 1,
        "tracing": True}
    assert line["models"] == 11 and line["power_levels"] == ["eco", "balanced", "precision"]
    assert line["pid"] == product.gw.svc.proc.pid
    text = Path(product.gw.svc.log).read_text()
    env = product.gw.env
    for secret in (member.key, env["CREDITGATE_ADMIN_TOKEN"], env["CREDITGATE_UPSTREAM_KEY"],
                   env["CREDITGATE_BYOK_KEYS"], "sk-client-sneaky-in-body", "sk-byok-secret-in-log-test-77"):
        assert secret not in text
