"""The disconnect watch: a client that leaves ends a stream's wait at once, gives a non-stream answer
`drain_seconds` more to arrive, and is no failure once the answer is being completed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.gateway.context import RequestContext
from proxy.gateway.watch import DisconnectWatch


def ctx(stream: bool) -> RequestContext:
    return RequestContext(request_id="req_w", route="chat/completions", headers={}, body={}, stream=stream)


def leaves_after(seconds: float) -> Any:
    async def receive() -> dict[str, str]:
        await asyncio.sleep(seconds)
        return {"type": "http.disconnect"}

    return receive


async def test_a_stream_whose_client_left_stops_waiting_at_once() -> None:
    request = ctx(stream=True)
    watch = DisconnectWatch(request, drain_seconds=30)
    watch.start(leaves_after(0.05))
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError):
        async with watch:
            await asyncio.sleep(30)  # LiteLLM has not answered yet
    watch.stop()
    assert loop.time() - began < 5
    assert (watch.disconnected, request.failure) == (True, "client_disconnected")


async def test_a_non_stream_answer_gets_the_drain_time_to_arrive() -> None:
    arrives = ctx(stream=False)
    watch = DisconnectWatch(arrives, drain_seconds=2.0)
    watch.start(leaves_after(0.01))
    async with watch:
        await asyncio.sleep(0.2)  # the answer arrives within the drain: read, so its usage is known
    watch.stop()
    assert arrives.failure == "client_disconnected"
    late = ctx(stream=False)
    watch = DisconnectWatch(late, drain_seconds=0.3)
    watch.start(leaves_after(0.01))
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError):
        async with watch:
            await asyncio.sleep(30)
    watch.stop()
    assert 0.25 < loop.time() - began < 5


async def test_leaving_after_the_answer_is_complete_is_no_failure() -> None:
    request = ctx(stream=True)
    watch = DisconnectWatch(request, drain_seconds=30)
    watch.done = True
    watch.start(leaves_after(0))
    async with watch:
        await asyncio.sleep(0.05)
    watch.stop()
    assert (watch.disconnected, request.failure) == (False, None)
