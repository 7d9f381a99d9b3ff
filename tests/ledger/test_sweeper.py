"""The sweeper: expired holds are settled in the background, from the database alone."""

from __future__ import annotations

import asyncio

import asyncpg

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
