"""Everything that depends on the database clock: allocation periods, hold expiry by the sweeper,
checkpoints, late settles replacing the sweeper's estimate, expiring grants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from proxy.errors import ProxyError
from proxy.ledger.pg import PgLedger
from proxy.ledger.sweeper import Sweeper
from tests.ledger.conftest import add_member, add_org, hold, pool_state, set_clock, set_clock_to, usage, violations

ORG, U1 = "org_t", "usr_t"
DAY = datetime(2026, 3, 4, 23, 59, 55, tzinfo=UTC)  # a Wednesday


async def _setup(db: asyncpg.Connection, ledger: PgLedger, *, limit: int | None = None, period: str = "none",
                 grant: int = 10_000) -> None:
    await add_org(db, ORG)
    await add_member(db, ORG, U1, limit=limit, period=period)
    await ledger.grant(ORG, grant, "seed", "seed", None, "operator")


async def _alloc_rows(db: asyncpg.Connection) -> list[tuple[datetime, int, int]]:
    rows = await db.fetch("""SELECT period_start, posted, pending FROM creditgate.allocation_usage
                              WHERE org_id = $1 ORDER BY period_start""", ORG)
    return [(r["period_start"], r["posted"], r["pending"]) for r in rows]


async def test_daily_allocation_rolls_over_at_midnight_utc(db: asyncpg.Connection, ledger: PgLedger) -> None:
    await _setup(db, ledger, limit=100, period="day")
    await set_clock_to(db, DAY)
    await ledger.reserve(hold(ORG, U1, "a", 60))
    await ledger.settle(ORG, "a", usage(60))
    await ledger.reserve(hold(ORG, U1, "b", 30))  # reserved on the 4th: counts on the 4th
    with pytest.raises(ProxyError) as exc:
        await ledger.reserve(hold(ORG, U1, "c", 11))
    assert exc.value.code == "user_allocation_exhausted"
    await set_clock_to(db, DAY + timedelta(seconds=10))  # 00:00:05 on the 5th: a new period starts at zero
    await ledger.settle(ORG, "b", usage(25))  # its settlement lands on the 4th too
    await ledger.reserve(hold(ORG, U1, "c", 100))
    day4, day5 = datetime(2026, 3, 4, tzinfo=UTC), datetime(2026, 3, 5, tzinfo=UTC)
    assert await _alloc_rows(db) == [(day4, 85, 0), (day5, 0, 100)]
    credits = await ledger.credits(ORG, U1)
    assert credits["allocation"] == {"limit": 100, "used": 0, "held": 100, "available": 0, "period": "day",
                                     "resets_at": datetime(2026, 3, 6, tzinfo=UTC)}
    await set_clock(db, None)
    await ledger.void(ORG, "c")
    assert await violations(db) == []


@pytest.mark.parametrize(("period", "start", "reset"), [
    ("week", datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 9, tzinfo=UTC)),  # ISO week: Monday
    ("month", datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)),
    ("none", datetime(1970, 1, 1, tzinfo=UTC), None),
])
async def test_week_month_and_none_periods(db: asyncpg.Connection, ledger: PgLedger, period: str,
                                           start: datetime, reset: datetime | None) -> None:
    await _setup(db, ledger, limit=50, period=period)
    await set_clock_to(db, DAY)
    await ledger.reserve(hold(ORG, U1, "a", 50))
    await ledger.settle(ORG, "a", usage(50))
    assert await _alloc_rows(db) == [(start, 50, 0)]
    assert (await ledger.credits(ORG, U1))["allocation"]["resets_at"] == reset
    await set_clock(db, None)
    assert await violations(db) == []


async def test_lowered_allocation_blocks_new_holds_without_touching_history(
        db: asyncpg.Connection, ledger: PgLedger) -> None:
    await _setup(db, ledger, limit=100)
    await ledger.reserve(hold(ORG, U1, "a", 60))
    await ledger.settle(ORG, "a", usage(60))
    await db.execute("UPDATE creditgate.memberships SET allocation_millicredits = 50 WHERE user_id = $1", U1)
    with pytest.raises(ProxyError) as exc:
        await ledger.reserve(hold(ORG, U1, "b", 0 + 1))
    assert (exc.value.status, exc.value.code) == (402, "user_allocation_exhausted")
    assert [(p, s) for _, p, s in await _alloc_rows(db)] == [(60, 0)]
    assert (await ledger.credits(ORG, U1))["allocation"] == {
        "limit": 50, "used": 60, "held": 0, "available": 0, "period": "none", "resets_at": None}
    await db.execute("UPDATE creditgate.memberships SET allocation_millicredits = NULL WHERE user_id = $1", U1)
    await ledger.reserve(hold(ORG, U1, "b", 1))
    assert await violations(db) == []


async def test_sweeper_settles_expired_holds_from_checkpoint_or_prompt(
        db: asyncpg.Connection, ledger: PgLedger) -> None:
    await _setup(db, ledger)
    counted: list[int] = []
    sweeper = Sweeper(ledger, 1.0, on_expired=counted.append)
    await ledger.reserve(hold(ORG, U1, "streamed", 100, prompt=10, in_rate="1", out_rate="2"))
    await ledger.reserve(hold(ORG, U1, "silent", 100, prompt=10, in_rate="0.35", out_rate="2"))
    await ledger.checkpoint(ORG, "streamed", 7)
    await set_clock(db, 110)  # not yet, with room for a slow machine's seconds since the reserves
    assert await sweeper.sweep_once() == (0, 0)
    await set_clock(db, 121)
    assert await sweeper.sweep_once() == (2, 0)
    assert counted == [2]
    streamed = await ledger.request(ORG, "streamed")
    silent = await ledger.request(ORG, "silent")
    assert streamed is not None and silent is not None
    assert (streamed["status"], streamed["charged_millicredits"], streamed["usage_source"],
            streamed["completion_tokens"]) == ("settled", 24, "checkpoint", 7)  # ceil(10*1 + 7*2)
    assert (silent["status"], silent["charged_millicredits"], silent["usage_source"]) == (
        "settled", 4, "prompt_only")  # ceil(10 * 0.35)
    assert await pool_state(db, ORG) == (10_000, 28, 0, 0)
    # the real usage arrives late: it replaces the estimate once, journaled as a correction
    late = await ledger.settle(ORG, "streamed", usage(130))
    assert (late.status, late.charged) == ("late_posted", 130)
    assert await pool_state(db, ORG) == (10_000, 134, 0, 0)
    assert (await ledger.settle(ORG, "streamed", usage(130))).status == "already_settled"
    lower = await ledger.settle(ORG, "silent", usage(1))
    assert (lower.status, lower.charged) == ("late_posted", 1)
    assert await pool_state(db, ORG) == (10_000, 131, 0, 0)
    row = await ledger.request(ORG, "streamed")
    assert row is not None and (row["charged_millicredits"], row["usage_source"]) == (130, "provider")
    kinds = [r["kind"] for r in (await ledger.entries(ORG, user_id=U1, limit=10, after=None))[0]]
    assert kinds == ["correction", "correction", "expire", "expire", "hold", "hold"]
    await set_clock(db, None)
    assert await violations(db) == []


async def test_checkpoint_renews_the_hold(db: asyncpg.Connection, ledger: PgLedger) -> None:
    await _setup(db, ledger)
    await ledger.reserve(hold(ORG, U1, "s", 100))
    await set_clock(db, 100)
    await ledger.checkpoint(ORG, "s", 3)
    await set_clock(db, 215)
    assert await ledger.expire() == (0, 0)
    await set_clock(db, 221)
    assert await ledger.expire() == (1, 0)
    await ledger.checkpoint(ORG, "s", 9)  # too late: a no-op on a resolved hold
    row = await ledger.request(ORG, "s")
    assert row is not None and (row["completion_tokens"], row["usage_source"]) == (3, "checkpoint")
    await set_clock(db, None)
    assert await violations(db) == []


async def test_expired_grant_stops_counting(db: asyncpg.Connection, ledger: PgLedger) -> None:
    await add_org(db, ORG)
    await add_member(db, ORG, U1)
    t0 = await db.fetchval("SELECT creditgate.now()")
    await ledger.grant(ORG, 1000, "promo", "promo", t0 + timedelta(hours=1), "operator")
    await ledger.grant(ORG, 500, "paid", "paid", None, "operator")
    await ledger.reserve(hold(ORG, U1, "a", 300))
    await ledger.settle(ORG, "a", usage(300))
    with pytest.raises(ProxyError) as exc:
        await ledger.grant(ORG, 1, "past", "past", t0 - timedelta(seconds=1), "operator")
    assert exc.value.code == "invalid_value"
    await set_clock(db, 3601)
    assert await ledger.expire() == (0, 1)
    # expiring credit is drawn first: 300 spent came from the promo, its other 700 is forfeited
    assert await pool_state(db, ORG) == (800, 300, 0, 0)
    assert (await ledger.pool(ORG))["available"] == 500
    with pytest.raises(ProxyError) as exc:
        await ledger.reserve(hold(ORG, U1, "b", 501))
    assert exc.value.code == "org_pool_exhausted"
    assert await ledger.expire() == (0, 0)
    await set_clock(db, None)
    assert await violations(db) == []


async def test_sweeper_charges_a_unit_priced_hold_what_was_asked(db: asyncpg.Connection, ledger: PgLedger) -> None:
    """An image generation carries no per-token rates: if its replica dies, the sweeper charges the hold,
    which is the price of the images asked for, rather than nothing."""
    await _setup(db, ledger)
    await ledger.reserve(hold(ORG, U1, "images", 120, prompt=9, in_rate="0", out_rate="0"))
    await ledger.reserve(hold(ORG, U1, "byok-images", 0, prompt=9, in_rate="0", out_rate="0", byok=True))
    await set_clock(db, 121)
    assert await Sweeper(ledger, 1.0).sweep_once() == (2, 0)
    images, byok = await ledger.request(ORG, "images"), await ledger.request(ORG, "byok-images")
    assert images is not None and byok is not None
    assert (images["status"], images["charged_millicredits"], images["usage_source"]) == ("settled", 120, "prompt_only")
    assert (byok["status"], byok["charged_millicredits"]) == ("settled", 0)
    assert await pool_state(db, ORG) == (10_000, 120, 0, 0)
    await set_clock(db, None)
    assert await violations(db) == []
