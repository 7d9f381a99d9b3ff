"""The expiry sweeper: an asyncio task every replica runs every `sweep_interval_seconds`.

Each pass settles every pending hold past its expiry from the database alone (`checkpoint` /
`prompt_only`, see `creditgate.expire_holds`) and forfeits expired grants. The SQL claims rows with
SKIP LOCKED, so replicas sweeping at once share the work instead of waiting on each other. A hold
therefore never outlives its expiry by more than about one interval (invariant 3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from proxy.errors import ProxyError

log = logging.getLogger("creditgate.sweeper")


class Expirer(Protocol):
    async def expire(self, limit: int = 500) -> tuple[int, int]: ...


class Sweeper:
    """`on_expired(n)` is called with the number of holds each pass expired (for the metric)."""

    def __init__(self, ledger: Expirer, interval_seconds: float, *,
                 on_expired: Callable[[int], None] | None = None, batch: int = 500) -> None:
        self._ledger = ledger
        self._interval = interval_seconds
        self._on_expired = on_expired
        self._batch = batch
        self._task: asyncio.Task[None] | None = None

    async def sweep_once(self) -> tuple[int, int]:
        """Expire everything due now, in batches; returns (holds, grants) expired."""
        holds = grants = 0
        while True:
            h, g = await self._ledger.expire(self._batch)
            holds, grants = holds + h, grants + g
            if h < self._batch and g < self._batch:
                break
        if holds and self._on_expired is not None:
            self._on_expired(holds)
        return holds, grants

    async def run(self) -> None:
        """Sweep forever; a failing sweep is retried next interval and logged once per change of state (an
        unavailable or unmigrated database would otherwise log every interval)."""
        failing: str | None = None
        while True:
            try:
                await self.sweep_once()
            except ProxyError as exc:
                if failing != exc.code:
                    log.warning("sweeps skipped until the ledger answers: %s", exc.code)
                failing = exc.code
            except Exception as exc:
                if failing != type(exc).__name__:
                    log.exception("sweep failed; retried every interval, logged again when the failure changes")
                failing = type(exc).__name__
            else:
                if failing is not None:
                    log.info("sweeps resumed")
                failing = None
            await asyncio.sleep(self._interval)

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="creditgate-sweeper")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
