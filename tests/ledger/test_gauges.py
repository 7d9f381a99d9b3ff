"""The reads behind the periodic gauges (proxy/ops/gauges.py): holds open and overdue, and how many pools
and allocations run low, against exact ledger states."""

from __future__ import annotations

import asyncpg

from proxy.ledger.pg import PgLedger
from tests.ledger.conftest import add_member, add_org, hold, set_clock, usage


async def spend(ledger: PgLedger, org: str, user: str, rid: str, amount: int) -> None:
    await ledger.reserve(hold(org, user, rid, amount))
    await ledger.settle(org, rid, usage(amount))


async def test_holds_open_and_past_expiry_plus_grace(ledger: PgLedger, db: asyncpg.Connection) -> None:
    assert await ledger.hold_counts() == (0, 0)
    await add_org(db, "org_h")
    await add_member(db, "org_h", "usr_h")
    await ledger.grant("org_h", 10_000, "seed", "g", None, "operator")
    await ledger.reserve(hold("org_h", "usr_h", "a", 100))  # expires at t + 120 s (the ledger's TTL)
    await set_clock(db, 125)  # a is past its expiry, within the 10 s grace
    await ledger.reserve(hold("org_h", "usr_h", "b", 100))  # expires at t + 245 s
    assert await ledger.hold_counts() == (2, 0)
    await set_clock(db, 131)  # a is past expiry + grace; b is not
    assert await ledger.hold_counts() == (2, 1)
    await ledger.settle("org_h", "a", usage(50))
    assert await ledger.hold_counts() == (1, 0)


async def test_pools_and_allocations_low_and_exhausted(ledger: PgLedger, db: asyncpg.Connection) -> None:
    assert await ledger.low_credit() == {"pool": (0, 0), "allocation": (0, 0)}
    for org in ("org_low", "org_tenth", "org_empty", "org_never", "org_suspended", "org_owes"):
        await add_org(db, org)
        await add_member(db, org, f"usr_{org}")
        if org != "org_never":
            await ledger.grant(org, 1000, "seed", "g", None, "operator")
    await spend(ledger, "org_low", "usr_org_low", "r", 901)  # 99 left: under a tenth
    await spend(ledger, "org_tenth", "usr_org_tenth", "r", 900)  # 100 left: exactly a tenth, not low
    await spend(ledger, "org_empty", "usr_org_empty", "r", 1000)  # nothing left
    await spend(ledger, "org_suspended", "usr_org_suspended", "r", 1000)
    await db.execute("UPDATE creditgate.orgs SET suspended = true WHERE id = 'org_suspended'")
    await ledger.reserve(hold("org_owes", "usr_org_owes", "r", 1000))
    await ledger.settle("org_owes", "r", usage(1200))  # overage: the balance is below zero
    assert await ledger.low_credit() == {"pool": (3, 2), "allocation": (0, 0)}

    await add_org(db, "org_big")
    await ledger.grant("org_big", 1_000_000, "seed", "g", None, "operator")
    members = {"usr_49": (500, "none", 451), "usr_50": (500, "none", 450), "usr_zero": (0, "none", 0),
               "usr_unlimited": (None, "none", 300), "usr_day": (100, "day", 100), "usr_held": (100, "none", 0)}
    for user, (limit, period, spent) in members.items():
        await add_member(db, "org_big", user, limit=limit, period=period)
        if spent:
            await spend(ledger, "org_big", user, f"r_{user}", spent)
    await ledger.reserve(hold("org_big", "usr_held", "pending", 100))  # held counts as used
    await add_member(db, "org_big", "usr_suspended", limit=100)
    await spend(ledger, "org_big", "usr_suspended", "r_s", 100)
    await db.execute("UPDATE creditgate.memberships SET suspended = true WHERE user_id = 'usr_suspended'")
    # usr_49 (49 of 500 left) is low; usr_day and usr_held have nothing left
    assert await ledger.low_credit() == {"pool": (3, 2), "allocation": (3, 2)}
    await ledger.settle("org_big", "pending", usage(100))
    await set_clock(db, 86_400)  # the next UTC day: usr_day's allocation starts again
    assert await ledger.low_credit() == {"pool": (3, 2), "allocation": (2, 1)}
