"""Work started and not awaited: held until it ends (the event loop keeps only weak references to tasks,
so an unheld task can vanish mid-flight), counted, and drained at shutdown. The one holder the ledger,
its group commit and the credit policy share."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Background:
    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Run `work` now without awaiting it; the task is held until it ends."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for every task running now to end (their failures are theirs to log)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for `event` at most `timeout` seconds (None: no limit); True when it was set.

    `asyncio.timeout`, never `asyncio.wait_for`: on Python 3.11 a `wait_for` whose task is cancelled in the same
    tick as the event fires swallows the cancellation, so a loop built on it never stops and its `close()` hangs.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Stop a background loop and wait until it has ended (its failure, if any, was its own to log)."""
    if task is not None and not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
