"""Grants expire exactly (CONTRACT.md, Money): a grant that expires forfeits all of it that was not
spent, including what holds release after the expiry. Expiring credit is drawn first; every forfeit is
a journal entry; a late charge recomputes what its hold forfeits, so the final forfeit depends only on
the final charges, not on the order things happened in."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg

from proxy.ledger.pg import PgLedger
from proxy.ledger.sweeper import Sweeper
from proxy.ledger.verify import verify
from tests.ledger.conftest import add_member, add_org, hold, pool_state, set_clock, usage, violations

ORG, U1 = "org_x", "usr_x"
HOUR = 3600


async def _org(db: asyncpg.Connection, ledger: PgLedger, expiring: int, *, other: int = 0,
               life: float = 60) -> None:
    """An org with `expiring` credit that expires in `life` seconds and `other` credit that never does."""
    await add_org(db, ORG)
    await add_member(db, ORG, U1)
    t0 = await db.fetchval("SELECT creditgate.now()")
    await ledger.grant(ORG, expiring, "promo", "promo", t0 + timedelta(seconds=life), "operator")
    if other:
        await ledger.grant(ORG, other, "paid", "paid", None, "operator")


async def _grant(db: asyncpg.Connection, key: str = "promo") -> tuple[Any, ...]:
    """(forfeited, held_at_expiry) of a grant."""
    r = await db.fetchrow("SELECT forfeited, held_at_expiry FROM creditgate.grants WHERE idempotency_key = $1", key)
    assert r is not None
    return r["forfeited"], r["held_at_expiry"]


async def _expired_held(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT expired_held FROM creditgate.pools WHERE org_id = $1", ORG))


async def _journal(db: asyncpg.Connection) -> list[tuple[Any, ...]]:
    """(kind, amount, d_granted, request_id) of the org's journal, oldest first."""
    rows = await db.fetch("SELECT kind, amount, d_granted, request_id FROM creditgate.journal WHERE org_id = $1 "
                          "ORDER BY version", ORG)
    return [tuple(r) for r in rows]


async def _clean(db: asyncpg.Connection, dsn: str) -> None:
    await set_clock(db, None)
    assert await violations(db) == []
    assert await verify(dsn) == []


async def test_settle_after_expiry_forfeits_what_the_hold_releases(
        db: asyncpg.Connection, ledger: PgLedger, ledger_db: str) -> None:
    await _org(db, ledger, 1000)
    await ledger.reserve(hold(ORG, U1, "a", 600))
    await set_clock(db, 61)
    assert await ledger.expire() == (0, 1)
    # the 400 available is forfeited now; the 600 the hold covers is forfeited as it is released
    assert await pool_state(db, ORG) == (600, 0, 600, 0)
    assert await _expired_held(db) == 600
    assert await _grant(db) == (400, 600)
    res = await ledger.settle(ORG, "a", usage(100))
    assert (res.status, res.charged, res.remaining) == ("posted", 100, 0)
    assert await pool_state(db, ORG) == (100, 100, 0, 0)  # the 500 released is forfeited
    assert (await ledger.pool(ORG))["available"] == 0
    assert await _expired_held(db) == 0
    assert await _grant(db) == (900, 600)
    assert await _journal(db) == [("grant", 1000, 1000, None), ("hold", 600, 0, "a"), ("grant_expiry", 400, -400, None),
                                  ("post", 100, 0, "a"), ("grant_expiry", 500, -500, "a")]
    assert await ledger.expire() == (0, 0)
    assert (await ledger.settle(ORG, "a", usage(100))).status == "already_settled"  # a replay forfeits nothing
    assert await pool_state(db, ORG) == (100, 100, 0, 0)
    await _clean(db, ledger_db)


async def test_expiring_credit_is_drawn_first(db: asyncpg.Connection, ledger: PgLedger, ledger_db: str) -> None:
    """With a second grant that never expires, the hold drew on the expiring one: what it releases
    is forfeited, the other grant stays whole."""
    await _org(db, ledger, 1000, other=1000)
    await ledger.reserve(hold(ORG, U1, "a", 600))
    await set_clock(db, 61)
    assert await ledger.expire() == (0, 1)
    assert await pool_state(db, ORG) == (1600, 0, 600, 0)
    assert (await ledger.pool(ORG))["available"] == 1000
    assert await _grant(db) == (400, 600)
    res = await ledger.settle(ORG, "a", usage(100))
    assert (res.status, res.remaining) == ("posted", 1000)
    assert await pool_state(db, ORG) == (1100, 100, 0, 0)
    assert (await ledger.pool(ORG))["available"] == 1000  # the paid grant, untouched
    assert await _grant(db) == (900, 600)
    await _clean(db, ledger_db)


async def test_a_hold_spanning_both_grants_spends_the_expired_credit_first(
        db: asyncpg.Connection, ledger: PgLedger, ledger_db: str) -> None:
    await _org(db, ledger, 1000, other=1000)
    await ledger.reserve(hold(ORG, U1, "a", 1500))  # 1000 of it is the expiring grant
    await set_clock(db, 61)
    assert await ledger.expire() == (0, 1)
    assert await pool_state(db, ORG) == (2000, 0, 1500, 0)
    assert await _grant(db) == (0, 1000)
    await ledger.settle(ORG, "a", usage(800))  # the 800 spent came from the expiring grant: 200 of it is left
    assert await pool_state(db, ORG) == (1800, 800, 0, 0)
    assert (await ledger.pool(ORG))["available"] == 1000
    assert await _grant(db) == (200, 1000)
    await _clean(db, ledger_db)


async def test_holds_taken_after_the_expiry_carry_no_expired_credit(
        db: asyncpg.Connection, ledger: PgLedger, ledger_db: str) -> None:
    await _org(db, ledger, 1000, other=1000)
    await ledger.reserve(hold(ORG, U1, "before", 600))
    await set_clock(db, 61)
    assert await ledger.expire() == (0, 1)
    await ledger.reserve(hold(ORG, U1, "after", 1000))  # all of the paid grant
    await ledger.void(ORG, "after")  # gives the paid credit back, forfeits nothing
    assert await pool_state(db, ORG) == (1600, 0, 600, 0)
    await ledger.reserve(hold(ORG, U1, "after2", 1000))
    await ledger.settle(ORG, "after2", usage(1000))
    assert await pool_state(db, ORG) == (1600, 1000, 600, 0)
    await ledger.void(ORG, "before")  # the expiring grant's 600: forfeited
    assert await pool_state(db, ORG) == (1000, 1000, 0, 0)
    assert (await ledger.pool(ORG))["available"] == 0
    assert await _grant(db) == (1000, 600)
    await _clean(db, ledger_db)


async def test_void_after_expiry_forfeits_it_all_and_a_late_charge_takes_back_what_it_spent(
        db: asyncpg.Connection, ledger: PgLedger, ledger_db: str) -> None:
    await _org(db, ledger, 1000)
    await ledger.reserve(hold(ORG, U1, "a", 600))
    await set_clock(db, 61)
    assert await ledger.expire() == (0, 1)
    await ledger.void(ORG, "a")
    assert await pool_state(db, ORG) == (0, 0, 0, 0)
    assert await _grant(db) == (1000, 600)
    # the request was served after all: the 250 it spent was the expired credit, not a receivable
    late = await ledger.settle(ORG, "a", usage(250))
    assert (late.status, late.charged) == ("late_posted", 250)
    assert await pool_state(db, ORG) == (250, 250, 0, 0)
    assert await _grant(db) == (750, 600)
    assert (await _journal(db))[-4:] == [("void", 600, 0, "a"), ("grant_expiry", 600, -600, "a"),
                                         ("late_post", 250, 0, "a"), ("grant_expiry", -250, 250, "a")]
    await _clean(db, ledger_db)


async def test_sweeper_expiry_after_grant_expiry(db: asyncpg.Connection, ledger: PgLedger, ledger_db: str) -> None:
    """The grant expires at 60 s, the holds (TTL 120 s) at 120 s; the sweeper charges them from their
    prompt / checkpoint and forfeits the rest; the real usage arriving later recomputes the forfeit."""
    await _org(db, ledger, 1000, life=60)
    sweeper = Sweeper(ledger, 1.0)
    await ledger.reserve(hold(ORG, U1, "silent", 300, prompt=10, in_rate="1", out_rate="2"))
    await ledger.reserve(hold(ORG, U1, "streamed", 300, prompt=10, in_rate="1", out_rate="2"))
    await ledger.checkpoint(ORG, "streamed", 100)  # estimate ceil(10*1 + 100*2) = 210
    await set_clock(db, 61)
    assert await sweeper.sweep_once() == (0, 1)
    assert await pool_state(db, ORG) == (600, 0, 600, 0)
    assert await _grant(db) == (400, 600)
    await set_clock(db, 121)
    assert await sweeper.sweep_once() == (2, 0)
    assert await pool_state(db, ORG) == (220, 220, 0, 0)  # forfeits 290 and 90
    assert await _grant(db) == (780, 600)
    # real usage: "silent" spent more than its estimate (forfeited credit restored and spent),
    # "streamed" less (more of it forfeited); the totals are as if it had been settled in time
    assert (await ledger.settle(ORG, "silent", usage(40))).status == "late_posted"
    assert (await ledger.settle(ORG, "streamed", usage(50))).status == "late_posted"
    assert await pool_state(db, ORG) == (90, 90, 0, 0)
    assert await _grant(db) == (910, 600)
    kinds = [(k, a) for k, a, _, rid in await _journal(db) if rid == "streamed"]
    assert kinds == [("hold", 300), ("expire", 210), ("grant_expiry", 90), ("correction", -160), ("grant_expiry", 160)]
    await _clean(db, ledger_db)


async def test_two_grants_expiring_while_one_hold_covers_both(
        db: asyncpg.Connection, ledger: PgLedger, ledger_db: str) -> None:
    """The charge spends the grant that expired first, first."""
    await add_org(db, ORG)
    await add_member(db, ORG, U1)
    t0 = await db.fetchval("SELECT creditgate.now()")
    await ledger.grant(ORG, 300, "early", "early", t0 + timedelta(seconds=60), "operator")
    await ledger.grant(ORG, 500, "late", "late", t0 + timedelta(seconds=90), "operator")
    await ledger.reserve(hold(ORG, U1, "a", 700))
    await set_clock(db, 61)
    assert await ledger.expire() == (0, 1)
    assert await _grant(db, "early") == (0, 300)  # the later grant counts at face value: the hold took early first
    await set_clock(db, 91)
    assert await ledger.expire() == (0, 1)
    assert await _grant(db, "late") == (100, 400)
    assert await pool_state(db, ORG) == (700, 0, 700, 0)
    await ledger.settle(ORG, "a", usage(450))  # early's 300 all spent, late's 150 of 400
    assert await _grant(db, "early") == (0, 300)
    assert await _grant(db, "late") == (350, 400)
    assert await pool_state(db, ORG) == (450, 450, 0, 0)
    await _clean(db, ledger_db)


async def test_expiry_racing_settles_and_voids(db: asyncpg.Connection, ledger_db: str) -> None:
    """Two replicas sweep while 40 holds are settled or voided at once: however they interleave, the
    expiring grant forfeits exactly what was not spent (drawn first) and nothing deadlocks."""
    replicas = [await PgLedger.connect(ledger_db, hold_ttl_seconds=HOUR * 2, max_size=4) for _ in range(2)]
    try:
        await _org(db, replicas[0], 10_000, other=2000, life=60)
        for i in range(40):
            await replicas[i % 2].reserve(hold(ORG, U1, f"r{i}", 250))
        assert await pool_state(db, ORG) == (12_000, 0, 10_000, 0)
        await set_clock(db, 61)

        async def finish(i: int) -> None:
            await asyncio.sleep(0.001 * (i % 7))
            lg = replicas[i % 2]
            if i % 2:
                await lg.void(ORG, f"r{i}")
            else:
                await lg.settle(ORG, f"r{i}", usage(100))

        async def sweep(lg: PgLedger) -> None:
            for _ in range(5):
                await Sweeper(lg, 1.0).sweep_once()
                await asyncio.sleep(0.002)
        await asyncio.gather(*(finish(i) for i in range(40)), *(sweep(lg) for lg in replicas))
    finally:
        for lg in replicas:
            await lg.close()
    # 20 settles of 100 spent 2,000, all of it the expiring grant's: it forfeits the other 8,000
    assert await pool_state(db, ORG) == (4000, 2000, 0, 0)
    assert await _expired_held(db) == 0
    assert (await _grant(db))[0] == 8000
    assert await db.fetchval("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()") == 0
    await _clean(db, ledger_db)
