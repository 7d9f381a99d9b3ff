"""Waiting in tests for something that happens on its own beat (a background loop, another process, a stream
settled after its last byte): poll a check until it holds, fail the test past a deadline. Never a fixed sleep
followed by an assertion."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def until(check: Callable[[], object | Awaitable[object]], seconds: float = 5.0, what: str = "",
                *, every: float = 0.02) -> float:
    """Seconds until `check()` (a function or a coroutine function) is true; fails the test after `seconds`."""
    started = time.monotonic()
    while True:
        held = check()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return time.monotonic() - started
        assert time.monotonic() - started < seconds, f"not within {seconds} s: {what or 'the condition'}"
        await asyncio.sleep(every)


def until_sync(check: Callable[[], object], seconds: float = 5.0, what: str = "", *, every: float = 0.05) -> float:
    """`until` for a test without an event loop (it blocks)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not within {seconds} s: {what or 'the condition'}"
        time.sleep(every)
    return time.monotonic() - started
