"""Bad input, unknown routes and wrong methods: the contract's error JSON and status, X-Request-Id on
every answer, never a 500; plus health and metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import Gateway, GatewayFactory, chat


@pytest.fixture(scope="module")
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.http() as client:
        yield client


def error(code: str, message: str, param: str | None = None, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


BAD_BODIES = [
    (b"{not json", error("invalid_json", "The request body is not valid JSON.")),
    (b"", error("invalid_json", "The request body is not valid JSON.")),
    (b"\xff\xfe", error("invalid_json", "The request body is not valid JSON.")),
    (b"[1, 2]", error("invalid_value", "The request body must be a JSON object.")),
    (b'"text"', error("invalid_value", "The request body must be a JSON object.")),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', error("missing_field", "Missing required field: 'model'.",
                                                                 "model")),
    (b'{"model": 7, "messages": []}', error("invalid_value", "'model' must be a non-empty string.", "model")),
    (b'{"model": "  ", "messages": []}', error("invalid_value", "'model' must be a non-empty string.", "model")),
    (b'{"model": "fake-small"}', error("missing_field", "Missing required field: 'messages'.", "messages")),
    (b'{"model": "fake-small", "messages": "hi"}',
     error("invalid_value", "'messages' must be a non-empty list of message objects.", "messages")),
    (b'{"model": "fake-small", "messages": [1]}',
     error("invalid_value", "'messages' must be a non-empty list of message objects.", "messages")),
    (b'{"model": "fake-small", "messages": [{}], "stream": "yes"}',
     error("invalid_value", "'stream' must be a boolean.", "stream")),
    (b'{"model": "fake-small", "messages": [{}], "n": 0}', error("invalid_value", "'n' must be a positive integer.",
                                                                 "n")),
    (b'{"model": "fake-small", "messages": [{}], "max_tokens": -5}',
     error("invalid_value", "'max_tokens' must be a positive integer.", "max_tokens")),
    (b'{"model": "fake-small", "messages": [{}], "max_tokens": true}',
     error("invalid_value", "'max_tokens' must be a positive integer.", "max_tokens")),
    (b'{"model": "fake-small", "messages": [{}], "max_completion_tokens": 1.5}',
     error("invalid_value", "'max_completion_tokens' must be a positive integer.", "max_completion_tokens")),
    (b'{"model": "fake-small", "messages": [{}], "stream": true, "stream_options": []}',
     error("invalid_value", "'stream_options' must be an object.", "stream_options")),
    (b'{"model": "fake-small", "messages": [{}], "stream_options": {"include_usage": "yes"}}',
     error("invalid_value", "'include_usage' must be a boolean.", "stream_options.include_usage")),
]


@pytest.mark.parametrize(("raw", "expected"), BAD_BODIES)
def test_bad_chat_bodies(http: httpx.Client, raw: bytes, expected: dict[str, Any]) -> None:
    resp = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert (resp.status_code, resp.json()) == (400, expected)
    assert resp.headers["x-request-id"].startswith("req_")
    assert resp.headers["content-type"] == "application/json"


def test_route_specific_required_fields(http: httpx.Client) -> None:
    assert http.post("/v1/embeddings", json={"model": "fake-embed"}).json() == error(
        "missing_field", "Missing required field: 'input'.", "input")
    assert http.post("/api/v1/llm/completions", json={"model": "fake-small"}).json() == error(
        "missing_field", "Missing required field: 'prompt'.", "prompt")
    resp = http.post("/v1/images/generations", json={"model": "fake-image", "prompt": "x", "stream": True})
    assert (resp.status_code, resp.json()) == (400, error(
        "invalid_value", "Streaming is not supported for /images/generations.", "stream"))


def test_huge_bodies_are_413(http: httpx.Client) -> None:
    big = chat(messages=[{"role": "user", "content": "x" * (1024 * 1024)}])
    declared = http.post("/v1/chat/completions", json=big)
    assert (declared.status_code, declared.json()) == (413, error("body_too_large",
                                                                  "The request body exceeds 1048576 bytes."))

    def chunked() -> Iterator[bytes]:  # no Content-Length: the gateway has to count
        for _ in range(24):
            yield b" " * (64 * 1024)
        yield b"{}"

    counted = http.post("/v1/chat/completions", content=chunked())
    assert counted.status_code == 413 and counted.json()["error"]["code"] == "body_too_large"
    assert counted.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/chat/completions"), ("PUT", "/v1/embeddings"), ("DELETE", "/v1/models"),
    ("POST", "/v1/files"), ("PUT", "/v1/responses"), ("POST", "/v1/responses/resp_1/cancel"),
    ("GET", "/v1/responses/resp_1/input_items"), ("GET", "/"), ("POST", "/chat/completions"),
    ("POST", "/v1/chat/completions/extra"), ("GET", "/api/v1/llm/unknown"), ("POST", "/key/generate"),
    ("GET", "/health"),
])
def test_unknown_routes_and_methods_are_404(http: httpx.Client, method: str, path: str) -> None:
    resp = http.request(method, path, json={"model": "fake-small"})
    assert (resp.status_code, resp.json()) == (404, error("route_not_found", "Unknown route.",
                                                          type_="not_found_error"))
    assert resp.headers["x-request-id"].startswith("req_")


def test_health_readiness_and_metrics(http: httpx.Client, start_gateway: GatewayFactory, gateway: Gateway) -> None:
    live = http.get("/healthz")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    ready = http.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready",
                                                       "checks": {"litellm": "ok", "draining": "ok"}})

    async def database() -> None:
        raise OSError("connection refused to postgresql://secret@db")

    broken = start_gateway("http://127.0.0.1:9", ready_checks=(database,))
    with broken.http() as other:
        resp = other.get("/readyz")
    assert (resp.status_code, resp.json()) == (503, {"status": "unavailable",
                                                     "checks": {"litellm": "failed", "database": "failed",
                                                                "draining": "ok"},
                                                     "details": {"litellm": "upstream_unreachable",
                                                                 "database": "OSError"}})
    assert "x-request-id" in resp.headers
    http.post("/v1/chat/completions", content=b"nope")
    assert http.post("/v1/chat/completions", json=chat()).status_code == 200
    text = http.get("/metrics").text
    assert 'creditgate_requests_total{route="/v1/chat/completions",status="400"}' in text
    assert 'creditgate_requests_total{route="/healthz",status="200"}' in text
    assert 'creditgate_rejections_total{reason="invalid_json"}' in text
    assert "creditgate_active_streams 0.0" in text
    assert 'creditgate_overhead_seconds_count{route="/v1/chat/completions"}' in text
    assert 'creditgate_upstream_duration_seconds_count{route="/v1/chat/completions"}' in text


def test_a_broken_policy_or_cleanup_is_never_a_500(http: httpx.Client, gateway: Gateway) -> None:
    refused = http.post("/v1/chat/completions", json=chat(), headers={"x-test-crash": "policy"})
    assert (refused.status_code, refused.json()) == (502, error(
        "upstream_failed", "The gateway could not process the request.", type_="upstream_error"))
    rid = "cleanup-crash-1"
    served = http.post("/v1/chat/completions", json=chat(fake_chunks=2),
                       headers={"x-test-crash": "cleanup", "x-request-id": rid})
    assert served.status_code == 200 and served.json()["choices"][0]["message"]["content"] == "Hello w1"
    assert gateway.probe.context(rid).failure is None
    assert http.get("/healthz").status_code == 200
