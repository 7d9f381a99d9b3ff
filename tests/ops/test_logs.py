"""The access line: one JSON object per request (route, status, model, power level), never a secret."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.gateway.conftest import Gateway, chat


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
