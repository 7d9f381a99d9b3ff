"""The periodic gauges: what /metrics reports about the world beyond one request (holds, dependencies,
credit running low), refreshed by one background task per replica."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from proxy.ops.metrics import Metrics
from proxy.tasks import cancel

log = logging.getLogger("creditgate.gauges")
LOW_CREDIT_SECONDS = 15.0  # the low-credit gauges read every pool and membership: not every sweep interval


class GaugeReads(Protocol):
    """The ledger reads behind the gauges (proxy/ledger/queries.py)."""

    async def hold_counts(self) -> tuple[int, int]: ...

    async def low_credit(self) -> dict[str, tuple[int, int]]: ...


class Gauges:
    """Keeps the periodic gauges current, once per sweep interval: holds open and overdue (one count on the
    pending holds' index, which is also the PostgreSQL check), whether Redis and LiteLLM answer
    (`creditgate_dependency_up`), and every LOW_CREDIT_SECONDS the pools and allocations running low."""

    def __init__(self, ledger: GaugeReads, metrics: Metrics, interval: float,
                 checks: Mapping[str, Callable[[], Awaitable[None]]]) -> None:
        self._ledger, self._metrics, self._interval = ledger, metrics, max(interval, 1.0)
        self._checks = {"postgres": self._holds, **checks}
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="creditgate-holds-gauge")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel(task)

    async def _run(self) -> None:
        low_credit_due = 0.0
        while True:
            try:
                if await self._refresh() and time.monotonic() >= low_credit_due:
                    low_credit_due = time.monotonic() + LOW_CREDIT_SECONDS
                    for account, (low, exhausted) in (await self._ledger.low_credit()).items():
                        self._metrics.set_credit_low(account, low, exhausted)
            except Exception:  # noqa: BLE001 - a gauge must never take the replica down
                log.debug("gauges not refreshed", exc_info=True)
            await asyncio.sleep(self._interval)

    async def _refresh(self) -> bool:
        """Run every check at once (2 s each at most); True when PostgreSQL answered."""
        names = list(self._checks)
        results = await asyncio.gather(*(asyncio.wait_for(self._checks[n](), 2.0) for n in names),
                                       return_exceptions=True)
        for name, result in zip(names, results, strict=True):
            self._metrics.set_dependency(name, not isinstance(result, Exception))
        return not isinstance(results[0], Exception)

    async def _holds(self) -> None:
        self._metrics.set_holds(*await self._ledger.hold_counts())
