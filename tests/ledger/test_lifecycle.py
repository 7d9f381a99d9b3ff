"""Concurrency and lifecycle details: replicas migrating at once, an abandoned reserve, the sweeper
task, exactly k of N admitted within one process, unknown ids and orgs."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from proxy.db.migrate import discover, migrate
from proxy.errors import ProxyError
from proxy.ledger.batch import run_batch
from proxy.ledger.pg import PgLedger
from proxy.ledger.sweeper import Sweeper
from tests.ledger.conftest import add_member, add_org, hold, pool_state, set_clock, usage, violations

ORG, U1, U2 = "org_l", "usr_l1", "usr_l2"


async def test_replicas_migrating_at_once_apply_each_file_once(fresh_db: str) -> None:
    results = await asyncio.gather(*(migrate(fresh_db) for _ in range(4)))
    names = [m.name for m in discover()]
    assert sorted(results, key=len) == [[], [], [], names]
    conn = await asyncpg.connect(fresh_db)
    assert await conn.fetchval("SELECT count(*) FROM creditgate.schema_migrations") == len(names)
    await conn.close()


@pytest.fixture
async def org(db: asyncpg.Connection, ledger: PgLedger) -> PgLedger:
    await add_org(db, ORG)
    await add_member(db, ORG, U1)
    await add_member(db, ORG, U2, limit=3000)
    await ledger.grant(ORG, 10_000, "seed", "g1", None, "operator")
    return ledger


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


async def test_usage_by_model_and_day_and_history_per_user(org: PgLedger) -> None:
    await org.reserve(hold(ORG, U1, "a", 100))
    await org.settle(ORG, "a", usage(30, prompt=4, completion=6))
    await org.reserve(hold(ORG, U2, "b", 100))
    await org.settle(ORG, "b", usage(50, prompt=1, completion=2))
    by_model = await org.usage(ORG, group_by="model", user_id=None, start=None, end=None)
    assert by_model == [{"model": "fake-small", "requests": 2, "prompt_tokens": 5, "completion_tokens": 8,
                         "charged_millicredits": 80, "list_price_millicredits": 80}]
    by_day = await org.usage(ORG, group_by="day", user_id=U2, start=None, end=None)
    assert len(by_day) == 1 and by_day[0]["charged_millicredits"] == 50 and len(by_day[0]["day"]) == 10
    rows, more = await org.entries(ORG, user_id=U2, limit=10, after=None)
    assert [(r["kind"], r["amount_millicredits"], r["balance_delta"], r["held_delta"]) for r in rows] == [
        ("post", 50, -50, -100), ("hold", 100, 0, 100)] and not more


async def test_a_blind_void_never_releases_another_requests_hold(org: PgLedger, db: asyncpg.Connection) -> None:
    """A duplicate reserve whose outcome is unknown voids "its" hold by owner nonce, not by request id
    (the hammer found the request-id version releasing the original request's hold)."""
    await org.reserve(hold(ORG, U1, "dup", 500))
    assert await db.fetchval("SELECT creditgate.void_hold($1, 'dup', 'someone-else')", ORG) == "not_owner"
    assert await db.fetchval("SELECT state::text FROM creditgate.holds WHERE request_id = 'dup'") == "pending"
    owner = await db.fetchval("SELECT owner FROM creditgate.holds WHERE request_id = 'dup'")
    assert await db.fetchval("SELECT creditgate.void_hold($1, 'dup', $2)", ORG, owner) == "voided"
    assert await pool_state(db, ORG) == (10_000, 0, 0, 0)


async def test_suspension_holds_when_a_batch_settles_before_it_reserves(org: PgLedger, db: asyncpg.Connection) -> None:
    """One batch: a settle then a reserve of the same org; the reserve must still see the suspension."""
    await org.reserve(hold(ORG, U1, "s1", 100))
    await db.execute("UPDATE creditgate.orgs SET suspended = true WHERE id = $1", ORG)
    res, sets = await run_batch(org.db, 60, [(hold(ORG, U1, "s2", 100), "o")], [(ORG, "s1", usage(10))], 5)
    assert [o.status for o in sets] == ["posted"]  # settling what was admitted before goes on
    assert [o.status for o in res] == ["suspended"]
    assert await violations(db) == []


async def test_one_batch_across_orgs_keeps_each_org_apart(ledger: PgLedger, db: asyncpg.Connection) -> None:
    """A batch mixing three orgs, submitted out of order: each org's pool, suspension and journal stay
    its own (the batch switches pool state at every org boundary)."""
    for org, credit in (("org_x1", 1000), ("org_x2", 150), ("org_x3", 1000)):
        await add_org(db, org)
        await add_member(db, org, U1)
        await ledger.grant(org, credit, "seed", "g", None, "operator")
        await ledger.reserve(hold(org, U1, "old", 100))
    await db.execute("UPDATE creditgate.orgs SET suspended = true WHERE id = 'org_x1'")
    reserves = [(hold("org_x3", U1, "n1", 500), "o"), (hold("org_x1", U1, "n2", 1), "o"),
                (hold("org_x2", U1, "n3", 100), "o"), (hold("org_x2", U1, "n4", 60), "o"),
                (hold("org_x3", U1, "n5", 600), "o")]
    settles = [("org_x2", "old", usage(40)), ("org_x3", "old", usage(100)), ("org_x1", "old", usage(250))]
    res, sets = await run_batch(ledger.db, 60, reserves, settles, 5)
    assert [(o.status, o.charged) for o in sets] == [("posted", 40), ("posted", 100), ("posted", 250)]
    assert [o.status for o in res] == ["held", "suspended", "held", "org_pool_exhausted", "org_pool_exhausted"]
    assert await pool_state(db, "org_x1") == (1000, 100, 0, 150)
    assert await pool_state(db, "org_x2") == (150, 40, 100, 0)
    assert await pool_state(db, "org_x3") == (1000, 100, 500, 0)
    assert [o.remaining for o in sets] == [10, 400, 750]  # after the whole batch; suspension is not debt
    assert await violations(db) == []


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
