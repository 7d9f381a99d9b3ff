"""The periodic gauges: one refresh sets holds, every dependency's up/down and the low-credit counts; a
dependency that fails or hangs is down, never a stopped task."""

from __future__ import annotations

import asyncio

from proxy.ops.gauges import Gauges
from proxy.ops.metrics import Metrics


class Reads:
    def __init__(self) -> None:
        self.low_credit_reads = 0

    async def hold_counts(self) -> tuple[int, int]:
        return 7, 2

    async def low_credit(self) -> dict[str, tuple[int, int]]:
        self.low_credit_reads += 1
        return {"pool": (3, 1), "allocation": (5, 0)}


async def _ok() -> None:
    return None


async def _refused() -> None:
    raise ConnectionRefusedError


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_one_refresh_sets_every_gauge_and_a_failing_dependency_is_down() -> None:
    metrics, reads = Metrics(), Reads()
    gauges = Gauges(reads, metrics, 1.0, {"redis": _refused, "litellm": _ok})
    await gauges.open()
    try:
        for _ in range(100):
            if sample(metrics, "creditgate_credit_low", account="pool", level="low") is not None:
                break
            await asyncio.sleep(0.01)
    finally:
        await gauges.close()
    assert (sample(metrics, "creditgate_holds_open"), sample(metrics, "creditgate_holds_overdue")) == (7.0, 2.0)
    assert [sample(metrics, "creditgate_dependency_up", dependency=d) for d in ("postgres", "redis", "litellm")] == [
        1.0, 0.0, 1.0]
    assert [sample(metrics, "creditgate_credit_low", account=a, level=lv)
            for a in ("pool", "allocation") for lv in ("low", "exhausted")] == [3.0, 1.0, 5.0, 0.0]
    assert reads.low_credit_reads == 1


async def test_postgres_down_skips_the_low_credit_read_and_the_task_keeps_running() -> None:
    class Down(Reads):
        async def hold_counts(self) -> tuple[int, int]:
            raise ConnectionRefusedError

    metrics, reads = Metrics(), Down()
    gauges = Gauges(reads, metrics, 1.0, {})
    await gauges.open()
    try:
        for _ in range(100):
            if sample(metrics, "creditgate_dependency_up", dependency="postgres") is not None:
                break
            await asyncio.sleep(0.01)
        assert gauges._task is not None and not gauges._task.done()
    finally:
        await gauges.close()
    assert sample(metrics, "creditgate_dependency_up", dependency="postgres") == 0.0
    assert reads.low_credit_reads == 0
