"""The access line: one JSON object per request (route, status, model, power level), never a secret."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.app import create_app
from tests.gateway.conftest import Gateway, chat, make_settings


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
