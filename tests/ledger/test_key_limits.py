"""An API key's own spend limit, the reserve's third bound (0008_scoped_keys.sql), and the attribution written
on the hold and its usage record, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime

import asyncpg
import pytest

from proxy.errors import ProxyError
from proxy.ledger.pg import PgLedger
from tests.ledger.conftest import ORG, U1, U2, hold, set_clock, set_clock_to, usage, violations

KEY = "key_test"


async def add_key(conn: asyncpg.Connection, user: str, *, limit: int | None, period: str = "none",
                  key_id: str = KEY) -> None:
    await conn.execute(
        """INSERT INTO creditgate.api_keys (id, user_id, org_id, name, key_hash, key_prefix, limit_millicredits,
                                            limit_period)
           VALUES ($1, $2, $3, 'k', md5($1), 'sk-cg-x', $4, $5)""", key_id, user, ORG, limit, period)


async def key_usage(conn: asyncpg.Connection, key_id: str = KEY) -> list[tuple[int, int]]:
    rows = await conn.fetch("SELECT posted, pending FROM creditgate.key_usage WHERE key_id = $1 ORDER BY period_start",
                            key_id)
    return [(r["posted"], r["pending"]) for r in rows]


async def refused(ledger: PgLedger, rid: str, amount: int, user: str = U1) -> str | None:
    try:
        await ledger.reserve(hold(ORG, user, rid, amount))
    except ProxyError as exc:
        return exc.code
    return None


async def test_the_key_limit_is_a_third_bound(org: PgLedger, db: asyncpg.Connection) -> None:
    await add_key(db, U1, limit=1000)
    assert await refused(org, "r1", 600) is None
    assert await key_usage(db) == [(0, 600)]
    assert await refused(org, "r2", 401) == "key_limit_exhausted"
    assert await refused(org, "r2", 400) is None
    result = await org.settle(ORG, "r1", usage(250))
    assert (result.charged, result.remaining) == (250, 1000 - 250 - 400)  # the key is the smallest bound
    assert await key_usage(db) == [(250, 400)]
    await org.void(ORG, "r2")
    assert await key_usage(db) == [(250, 0)]
    assert await refused(org, "r3", 751) == "key_limit_exhausted"
    assert await refused(org, "r3", 750) is None
    assert await violations(db) == []


async def test_a_refusal_by_the_key_changes_nothing(org: PgLedger, db: asyncpg.Connection) -> None:
    await add_key(db, U1, limit=100)
    before = await db.fetchrow("SELECT * FROM creditgate.pools WHERE org_id = $1", ORG)
    with pytest.raises(ProxyError) as exc:
        await org.reserve(hold(ORG, U1, "r1", 101))
    assert (exc.value.status, exc.value.code) == (402, "key_limit_exhausted")
    assert exc.value.message == "This API key's own spend limit cannot cover this request (101 millicredits held)."
    assert await db.fetchrow("SELECT * FROM creditgate.pools WHERE org_id = $1", ORG) == before
    assert await db.fetchval("SELECT count(*) FROM creditgate.holds") == 0


async def test_the_pool_and_the_allocation_are_still_checked_first(org: PgLedger, db: asyncpg.Connection) -> None:
    await add_key(db, U2, limit=50_000)  # U2's allocation is 3,000, the pool 10,000
    assert await refused(org, "r1", 3001, user=U2) == "user_allocation_exhausted"
    assert await refused(org, "r2", 10_001, user=U2) == "org_pool_exhausted"


async def test_a_key_without_a_limit_is_tracked_so_a_later_limit_counts_its_spend(
        org: PgLedger, db: asyncpg.Connection) -> None:
    await add_key(db, U1, limit=None)
    await org.reserve(hold(ORG, U1, "r1", 500))
    await org.settle(ORG, "r1", usage(300))
    assert await key_usage(db) == [(300, 0)]
    await db.execute("UPDATE creditgate.api_keys SET limit_millicredits = 500 WHERE id = $1", KEY)
    assert await refused(org, "r2", 201) == "key_limit_exhausted"
    assert await refused(org, "r2", 200) is None


async def test_a_periodic_key_limit_resets_with_its_period(org: PgLedger, db: asyncpg.Connection) -> None:
    await add_key(db, U1, limit=1000, period="day")
    await set_clock_to(db, datetime(2026, 3, 1, 23, 59, tzinfo=UTC))
    await org.reserve(hold(ORG, U1, "r1", 900))
    await org.settle(ORG, "r1", usage(850))
    await org.reserve(hold(ORG, U1, "r2", 50))
    assert await refused(org, "r3", 101) == "key_limit_exhausted"
    await set_clock_to(db, datetime(2026, 3, 2, 0, 1, tzinfo=UTC))
    assert await refused(org, "r3", 1000) is None
    assert await key_usage(db) == [(850, 50), (0, 1000)]
    # the first day's hold settles into the first day's row, on the second day
    await org.settle(ORG, "r2", usage(20))
    assert await key_usage(db) == [(870, 0), (0, 1000)]
    await org.void(ORG, "r3")
    await set_clock(db, None)
    assert await violations(db) == []


async def test_the_sweeper_and_a_late_correction_keep_the_key_right(org: PgLedger, db: asyncpg.Connection) -> None:
    await add_key(db, U1, limit=5000)
    await org.reserve(hold(ORG, U1, "r1", 1000, prompt=10, in_rate="1"))
    await db.execute("UPDATE creditgate.holds SET expires_at = creditgate.now() - interval '1 second'")
    assert await org.expire() == (1, 0)
    assert await key_usage(db) == [(10, 0)]  # prompt_only: 10 tokens at 1
    result = await org.settle(ORG, "r1", usage(700))
    assert (result.status, result.charged) == ("late_posted", 700)
    assert await key_usage(db) == [(700, 0)]
    assert await violations(db) == []


async def test_concurrent_reserves_never_pass_the_key_limit(org: PgLedger, db: asyncpg.Connection,
                                                            ledger_db: str) -> None:
    """Two ledgers (two replicas' batch sessions) race 60 reserves for one key."""
    await add_key(db, U1, limit=1000)
    other = await PgLedger.connect(ledger_db, hold_ttl_seconds=120)
    try:
        outcomes = await asyncio.gather(*(refused((org, other)[i % 2], f"c{i}", 70) for i in range(60)))
    finally:
        await other.close()
    assert outcomes.count(None) == 14  # 14 * 70 = 980 <= 1000 < 15 * 70
    assert set(outcomes) == {None, "key_limit_exhausted"}
    assert await key_usage(db) == [(0, 980)]


async def test_attribution_is_written_on_the_hold_and_its_usage_record(org: PgLedger, db: asyncpg.Connection) -> None:
    await org.reserve(dataclasses.replace(hold(ORG, U1, "r1", 100), end_user="cust-42", tags=("team-a", "batch")))
    await org.reserve(hold(ORG, U1, "r2", 100))
    await org.settle(ORG, "r1", usage(40))
    await org.settle(ORG, "r2", usage(40))
    rows = await db.fetch("SELECT request_id, end_user, tags FROM creditgate.usage_records ORDER BY request_id")
    assert [(r["request_id"], r["end_user"], r["tags"]) for r in rows] == [
        ("r1", "cust-42", ["team-a", "batch"]), ("r2", None, None)]
    with pytest.raises(asyncpg.RaiseError, match="immutable"):
        await db.execute("UPDATE creditgate.holds SET end_user = 'x' WHERE request_id = 'r1'")


async def test_a_limit_needs_a_key_bound_to_an_org(org: PgLedger, db: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            """INSERT INTO creditgate.api_keys (id, user_id, name, key_hash, key_prefix, limit_millicredits)
               VALUES ('key_free', $1, 'k', 'h', 'p', 10)""", U1)


async def test_verify_sees_a_key_usage_that_does_not_match(org: PgLedger, db: asyncpg.Connection) -> None:
    await add_key(db, U1, limit=1000)
    await org.reserve(hold(ORG, U1, "r1", 100))
    await db.execute("UPDATE creditgate.key_usage SET pending = pending + 1")
    assert await violations(db) == [f"key_usage_matches_holds_and_usage {ORG}/{KEY}@1970-01-01 00:00:00+00"]
