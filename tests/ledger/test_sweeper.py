"""The sweeper: expired holds are settled in the background, from the database alone; a sweep that keeps
failing (the database down or not migrated) is logged once per change of state, not every interval."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from proxy.errors import ProxyError
from proxy.ledger.pg import PgLedger
from proxy.ledger.sweeper import Sweeper
from tests.ledger.conftest import ORG, U1, hold, set_clock, violations


async def test_sweeper_task_expires_holds_in_the_background(org: PgLedger, db: asyncpg.Connection) -> None:
    expired: list[int] = []
    sweeper = Sweeper(org, 0.05, on_expired=expired.append)
    await org.reserve(hold(ORG, U1, "orphan", 500, prompt=12, in_rate="1"))
    sweeper.start()
    try:
        await set_clock(db, 121)
        for _ in range(100):
            if expired:
                break
            await asyncio.sleep(0.05)
    finally:
        await sweeper.stop()
    assert expired == [1]
    row = await org.request(ORG, "orphan")
    assert row is not None and (row["status"], row["charged_millicredits"], row["usage_source"]) == (
        "settled", 12, "prompt_only")
    await set_clock(db, None)
    assert await violations(db) == []


class Failing:
    """An Expirer that fails as scripted: a ProxyError, another exception, or None (a sweep that works)."""

    def __init__(self, script: list[BaseException | None]) -> None:
        self.script = script
        self.calls = 0

    async def expire(self, limit: int = 500) -> tuple[int, int]:
        self.calls += 1
        failure = self.script.pop(0) if self.script else None
        if failure is not None:
            raise failure
        return 0, 0


async def test_a_failing_sweep_is_logged_once_per_change_of_state(caplog: pytest.LogCaptureFixture) -> None:
    down = ProxyError.ledger_unavailable()
    ledger = Failing([down, down, down, RuntimeError("a bug"), RuntimeError("a bug"), None, None, down])
    sweeper = Sweeper(ledger, 0.01)
    with caplog.at_level(logging.INFO, logger="creditgate.sweeper"):
        sweeper.start()
        try:
            for _ in range(500):
                if ledger.calls >= 10:
                    break
                await asyncio.sleep(0.01)
        finally:
            await sweeper.stop()
    assert [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records] == [
        ("WARNING", "sweeps skipped until the ledger answers: ledger_unavailable", False),
        ("ERROR", "sweep failed; retried every interval, logged again when the failure changes", True),
        ("INFO", "sweeps resumed", False),
        ("WARNING", "sweeps skipped until the ledger answers: ledger_unavailable", False),
        ("INFO", "sweeps resumed", False)]
