"""Concurrency and lifecycle details: replicas migrating at once, an abandoned reserve, the sweeper
task, exactly k of N admitted within one process, unknown ids and orgs."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from proxy.errors import ProxyError
from proxy.ledger.pg import PgLedger
from tests.ledger.conftest import ORG, U1, U2, hold, pool_state, usage, violations


async def test_exactly_k_of_n_admitted(org: PgLedger, db: asyncpg.Connection) -> None:
    """The pool affords 10 holds of 1,000 and U2's allocation 3 of them: 40 racing attempts."""
    async def attempt(i: int) -> str:
        try:
            await org.reserve(hold(ORG, U2 if i % 2 else U1, f"k{i}", 1000))
            return "held"
        except ProxyError as exc:
            return str(exc.code)
    outcomes = await asyncio.gather(*(attempt(i) for i in range(40)))
    assert outcomes.count("held") == 10
    assert await db.fetchval("SELECT count(*) FROM creditgate.holds WHERE user_id = $1", U2) == 3
    assert await pool_state(db, ORG) == (10_000, 0, 10_000, 0)
    assert await org.open_holds() == 10
    assert await violations(db) == []


async def test_a_reserve_whose_caller_went_away_is_voided(org: PgLedger, db: asyncpg.Connection) -> None:
    task = asyncio.ensure_future(org.reserve(hold(ORG, U1, "gone", 500)))
    await asyncio.sleep(0)  # queued, not yet answered
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if await db.fetchval("SELECT state::text FROM creditgate.holds WHERE request_id = 'gone'") == "voided":
            break
        await asyncio.sleep(0.02)
    assert await db.fetchval("SELECT state::text FROM creditgate.holds WHERE request_id = 'gone'") == "voided"
    assert await pool_state(db, ORG) == (10_000, 0, 0, 0)


async def test_a_settle_whose_caller_went_away_still_lands(org: PgLedger, db: asyncpg.Connection) -> None:
    await org.reserve(hold(ORG, U1, "r", 500))
    task = asyncio.ensure_future(org.settle(ORG, "r", usage(200)))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    again = await org.settle(ORG, "r", usage(200))  # re-driven: the first one landed exactly once
    assert (again.status, again.charged) == ("already_settled", 200)
    assert await pool_state(db, ORG) == (10_000, 200, 0, 0)


async def test_unknown_ids_and_orgs(org: PgLedger) -> None:
    await org.void(ORG, "never")  # no-ops
    await org.checkpoint(ORG, "never", 5)
    assert await org.request(ORG, "never") is None
    with pytest.raises(ProxyError) as exc:
        await org.grant("org_missing", 1, "x", "k", None, "operator")
    assert (exc.value.status, exc.value.code) == (404, "org_not_found")
    with pytest.raises(ProxyError) as exc:
        await org.pool("org_missing")
    assert exc.value.code == "org_not_found"
    with pytest.raises(ProxyError) as exc:
        await org.reserve(hold("org_missing", U1, "x", 1))
    assert exc.value.code == "not_a_member"
    with pytest.raises(ProxyError) as exc:
        await org.usage(ORG, group_by="week", user_id=None, start=None, end=None)
    assert (exc.value.status, exc.value.code) == (400, "invalid_value")


async def test_a_blind_void_never_releases_another_requests_hold(org: PgLedger, db: asyncpg.Connection) -> None:
    """A duplicate reserve whose outcome is unknown voids "its" hold by owner nonce, not by request id
    (the hammer found the request-id version releasing the original request's hold)."""
    await org.reserve(hold(ORG, U1, "dup", 500))
    assert await db.fetchval("SELECT creditgate.void_hold($1, 'dup', 'someone-else')", ORG) == "not_owner"
    assert await db.fetchval("SELECT state::text FROM creditgate.holds WHERE request_id = 'dup'") == "pending"
    owner = await db.fetchval("SELECT owner FROM creditgate.holds WHERE request_id = 'dup'")
    assert await db.fetchval("SELECT creditgate.void_hold($1, 'dup', $2)", ORG, owner) == "voided"
    assert await pool_state(db, ORG) == (10_000, 0, 0, 0)


async def test_a_reserve_stuck_behind_a_lock_fails_closed(org: PgLedger, db: asyncpg.Connection,
                                                          ledger_db: str) -> None:
    """The 2 s statement timeout turns a blocked pool row into 503 ledger_unavailable, nothing held."""
    blocker = await asyncpg.connect(ledger_db)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("SELECT 1 FROM creditgate.pools WHERE org_id = $1 FOR NO KEY UPDATE", ORG)
    try:
        with pytest.raises(ProxyError) as exc:
            await org.reserve(hold(ORG, U1, "stuck", 100))
        assert (exc.value.status, exc.value.code) == (503, "ledger_unavailable")
    finally:
        await tx.rollback()
        await blocker.close()
    assert await db.fetchval("SELECT count(*) FROM creditgate.holds WHERE request_id = 'stuck'") == 0
    await org.reserve(hold(ORG, U1, "stuck", 100))  # the id was never used: it is free
    assert await pool_state(db, ORG) == (10_000, 0, 100, 0)
