"""Streams through the real uvicorn server: chunks arrive spread over time, a client that hangs up
closes the provider's connection, a provider that dies mid-answer ends the stream with an error event,
and a non-stream answer is still read after its client left."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from devstack import services
from tests.gateway.conftest import Gateway, GatewayFactory, Provider, chat, new_request_id


async def _post(gateway: Gateway, body: dict[str, object], rid: str) -> tuple[aiohttp.ClientSession,
                                                                              aiohttp.ClientResponse]:
    session = aiohttp.ClientSession()
    resp = await session.post(f"{gateway.url}/v1/chat/completions", data=orjson.dumps(body),
                              headers={"content-type": "application/json", "x-request-id": rid})
    return session, resp


async def test_chunks_reach_the_client_as_the_provider_sends_them(gateway: Gateway) -> None:
    warm, warm_resp = await _post(gateway, chat(stream=True, fake_chunks=1), new_request_id())
    async with warm, warm_resp:
        await warm_resp.read()  # LiteLLM's first stream after start-up can be slow
    rid = new_request_id()
    session, resp = await _post(gateway, chat(stream=True, fake_chunks=10, fake_delay_ms=100), rid)
    arrivals: list[float] = []
    body = b""
    async with session, resp:
        assert resp.status == 200
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert resp.headers["cache-control"] == "no-cache"
        async for chunk in resp.content.iter_any():
            body += chunk
            if b'"content"' in chunk:
                arrivals.append(time.monotonic())
    # ten content events 100 ms apart (0.9 s): they arrive spread over time, not in one burst at the end
    assert len(arrivals) >= 5
    assert arrivals[-1] - arrivals[0] >= 0.45
    assert body.endswith(b"data: [DONE]\n\n")
    ctx = gateway.probe.context(rid)
    assert ctx.meter.chunks == 10 and ctx.failure is None
    assert ctx.usage is not None and ctx.usage.completion_tokens == 10


async def test_client_disconnect_closes_the_provider_connection(gateway: Gateway, provider: Provider) -> None:
    rid, tag = new_request_id(), f"disconnect-{new_request_id()}"
    session, resp = await _post(gateway, chat(stream=True, fake_chunks=100, fake_delay_ms=50, fake_tag=tag), rid)
    seen = 0
    async with session:
        async for chunk in resp.content.iter_any():
            seen += chunk.count(b'"content"')
            if seen >= 3:
                break
        resp.close()
        left_at = time.monotonic()
        fate = None
        while time.monotonic() - left_at < 5:
            fate = provider.stream(tag)
            if fate and fate["closed_early"]:
                break
            await asyncio.sleep(0.05)
    assert fate is not None and fate["closed_early"] is True and fate["finished"] is False
    assert fate["chunks_sent"] < 60  # stopped long before the 100th chunk (5 s of stream)
    ctx = gateway.probe.context(rid)
    assert ctx.failure == "client_disconnected"
    assert ctx.usage is None  # LiteLLM's usage chunk never came: settlement must use the meter
    assert ctx.meter.chunks >= 3 and ctx.meter.tokens() >= 3


async def test_provider_dying_mid_stream_ends_with_an_error_event(gateway: Gateway) -> None:
    rid = new_request_id()
    session, resp = await _post(gateway, chat(stream=True, fake_chunks=6, fake_delay_ms=50, fake_fail_after=2), rid)
    async with session, resp:
        assert resp.status == 200
        body = await resp.read()
    events = [e for e in body.split(b"\n\n") if e]
    assert b"[DONE]" not in body
    assert orjson.loads(events[-1][len(b"data: "):]) == {"error": {
        "message": "The model service failed to answer.", "type": "upstream_error", "param": None,
        "code": "upstream_failed"}}
    assert sum(b'"content"' in e for e in events) == 2
    assert b"litellm" not in body.lower() and b"OpenAIException" not in body
    ctx = gateway.probe.context(rid)
    assert ctx.failure == "upstream_failed" and ctx.meter.chunks == 2 and ctx.usage is None


async def test_nonstream_answer_is_read_after_the_client_left(gateway: Gateway) -> None:
    rid = new_request_id()
    session = aiohttp.ClientSession()
    async with session:
        try:
            await session.post(
                f"{gateway.url}/v1/chat/completions", data=orjson.dumps(chat(fake_chunks=5, fake_delay_ms=100)),
                headers={"content-type": "application/json", "x-request-id": rid, "x-test-settle": "1"},
                timeout=aiohttp.ClientTimeout(total=0.15),
            )
        except TimeoutError:
            pass
        else:
            raise AssertionError("the answer takes 0.5 s; the client gave up after 0.15 s")
    ctx = gateway.probe.context(rid)
    assert ctx.failure == "client_disconnected"
    assert ctx.usage is not None and (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (3, 5)
    assert rid in gateway.probe.settled_at  # the real usage was settled


async def test_nonstream_is_settled_before_headers_leave(gateway: Gateway) -> None:
    rid = new_request_id()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gateway.url}/v1/chat/completions", data=orjson.dumps(chat(fake_chunks=2)),
                                headers={"x-request-id": rid, "x-test-settle": "1"}) as resp:
            received = time.monotonic()
            assert resp.status == 200
            assert resp.headers["x-credits-charged"] == "1234"
            assert resp.headers["x-request-id"] == rid
            assert int(resp.headers["content-length"]) == len(await resp.read())
    assert gateway.probe.settled_at[rid] <= received


async def test_broken_or_stalled_upstream_connection_mid_stream(start_gateway: GatewayFactory,
                                                               fake_provider: services.Service) -> None:
    # the gateway straight in front of the provider: the TCP connection itself breaks or stalls mid-stream
    direct = start_gateway(fake_provider.url, upstream_timeout_seconds=1.0)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"fake_chunks": 6, "fake_delay_ms": 50, "fake_fail_after": 2}, "upstream_failed"),
        ({"fake_chunks": 3, "fake_delay_ms": 3000}, "upstream_timeout"),
    ]
    for extra, code in cases:
        rid = new_request_id()
        session, resp = await _post(direct, chat(stream=True, **extra), rid)
        async with session, resp:
            assert resp.status == 200
            body = await resp.read()
        events = [e for e in body.split(b"\n\n") if e]
        assert orjson.loads(events[-1][len(b"data: "):])["error"]["code"] == code
        assert b"[DONE]" not in body
        ctx = direct.probe.context(rid)
        assert ctx.failure == "upstream_failed" and ctx.response_started and ctx.meter.chunks >= 1
