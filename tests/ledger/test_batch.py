"""Group commit: one batch across orgs keeps each org's pool and suspension apart."""

from __future__ import annotations

import asyncpg

from proxy.ledger.batch import run_batch
from proxy.ledger.pg import PgLedger
from tests.ledger.conftest import ORG, U1, add_member, add_org, hold, pool_state, usage, violations


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
