"""`creditgate verify`: healthy ledgers pass; hand-corrupted ones fail, naming the invariant."""

from __future__ import annotations

import asyncio
import io

import asyncpg
import pytest

from proxy.db.migrate import migrate
from proxy.ledger.pg import PgLedger
from proxy.ledger.verify import main_verify, verify
from tests.ledger.conftest import add_member, add_org, hold, usage

ORG, U1 = "org_v", "usr_v"


@pytest.fixture
async def healthy(db: asyncpg.Connection, ledger: PgLedger) -> PgLedger:
    await add_org(db, ORG)
    await add_member(db, ORG, U1, limit=1000)
    await ledger.grant(ORG, 1000, "seed", "seed", None, "operator")
    await ledger.reserve(hold(ORG, U1, "a", 100))
    await ledger.settle(ORG, "a", usage(40))
    await ledger.reserve(hold(ORG, U1, "b", 100))
    return ledger


def _main(dsn: str) -> tuple[int, str]:
    out = io.StringIO()
    return main_verify(dsn, out), out.getvalue()


async def test_migrate_is_idempotent(ledger_db: str) -> None:
    assert await migrate(ledger_db) == []


async def test_healthy_ledger_passes(healthy: PgLedger, ledger_db: str) -> None:
    assert await verify(ledger_db) == []
    code, text = await asyncio.to_thread(_main, ledger_db)
    assert (code, text) == (0, "verify: all ledger invariants hold\n")


async def test_tampered_pool_fails(healthy: PgLedger, db: asyncpg.Connection, ledger_db: str) -> None:
    await db.execute("UPDATE creditgate.pools SET pending = pending - 10 WHERE org_id = $1", ORG)
    assert await verify(ledger_db) == [
        "journal_fold_matches_pool org_v: pool (1000,40,90,0,v4) journal (1000,40,100,0,v4)",
        "pool_pending_matches_holds org_v: pending 90, pending holds 100"]
    code, text = await asyncio.to_thread(_main, ledger_db)
    assert code == 1
    assert text.splitlines()[0] == "verify: 2 invariant violation(s):"
    assert "pool_pending_matches_holds org_v" in text


async def test_deleted_journal_entry_and_usage_record_fail(healthy: PgLedger, db: asyncpg.Connection,
                                                          ledger_db: str) -> None:
    with pytest.raises(asyncpg.RaiseError):  # append-only: refused while the triggers are on
        await db.execute("DELETE FROM creditgate.journal WHERE org_id = $1 AND kind = 'hold'", ORG)
    await db.execute("ALTER TABLE creditgate.journal DISABLE TRIGGER journal_append_only")
    await db.execute("ALTER TABLE creditgate.usage_records DISABLE TRIGGER usage_no_delete")
    await db.execute("DELETE FROM creditgate.journal WHERE org_id = $1 AND version = 3", ORG)
    await db.execute("DELETE FROM creditgate.usage_records WHERE org_id = $1", ORG)
    found = {line.split(" ")[0] for line in await verify(ledger_db)}
    assert found == {"journal_fold_matches_pool", "journal_versions_contiguous", "pool_spend_matches_usage",
                     "allocation_matches_holds_and_usage", "settled_hold_has_one_usage_record"}


async def test_overdue_hold_and_skewed_clock_fail(healthy: PgLedger, db: asyncpg.Connection, ledger_db: str) -> None:
    await db.execute("INSERT INTO creditgate.clock_skew (skew) VALUES (interval '200 seconds')")
    assert await verify(ledger_db) == ["database_clock_not_skewed clock_skew: skew 00:03:20",
                                       "no_hold_outlives_expiry org_v/b: expired at " + str(
                                           await db.fetchval("SELECT expires_at::text FROM creditgate.holds "
                                                             "WHERE request_id = 'b'"))]


async def test_unreachable_database_exits_2() -> None:
    from devstack.services import free_port

    code, text = await asyncio.to_thread(_main, f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    assert code == 2 and text.startswith("verify: cannot read the ledger")


async def test_overage_is_reported_per_org_and_fails(db: asyncpg.Connection, ledger: PgLedger, ledger_db: str) -> None:
    """A charge above its hold, and a late charge after a void beyond the credit left, are overage: the
    ledger books them as a receivable (no usage is dropped) and verify reports them per org and fails,
    even after a grant netted the receivable."""
    a, b = "org_over_a", "org_over_b"
    for org in (a, b):
        await add_org(db, org)
        await add_member(db, org, U1)
    await ledger.grant(a, 1000, "seed", "seed", None, "operator")
    await ledger.grant(b, 100, "seed", "seed", None, "operator")
    await ledger.reserve(hold(a, U1, "a1", 100))
    await ledger.settle(a, "a1", usage(130))  # 30 above its hold
    await ledger.reserve(hold(a, U1, "a2", 50))
    await ledger.settle(a, "a2", usage(90))  # 40 above its hold
    await ledger.reserve(hold(a, U1, "a3", 100))
    await ledger.settle(a, "a3", usage(100))  # at its hold: fine
    await ledger.reserve(hold(b, U1, "b1", 100))
    await ledger.void(b, "b1")
    await ledger.reserve(hold(b, U1, "b2", 100))  # takes all the credit b1 released
    late = await ledger.settle(b, "b1", usage(60))  # a late charge beyond the credit left
    assert (late.status, late.charged) == ("late_posted", 60)
    assert (await ledger.pool(a))["overage"] == 70 and (await ledger.pool(b))["overage"] == 60
    await ledger.grant(a, 500, "top up", "top", None, "operator")  # nets a's receivable; the defect stays
    assert (await ledger.pool(a))["overage"] == 0

    assert await verify(ledger_db) == [
        "overage org_over_a: 2 request(s) charged above their hold or the credit left, 70 millicredits",
        "overage org_over_b: 1 request(s) charged above their hold or the credit left, 60 millicredits"]
    code, text = await asyncio.to_thread(_main, ledger_db)
    assert code == 1
    assert text == (
        "verify: overage (a defect: the hold bounds every charge) in 2 org(s), 130 millicredits:\n"
        "  overage org_over_a: 2 request(s) charged above their hold or the credit left, 70 millicredits\n"
        "  overage org_over_b: 1 request(s) charged above their hold or the credit left, 60 millicredits\n")


async def test_violations_and_overage_are_both_reported(healthy: PgLedger, db: asyncpg.Connection,
                                                      ledger_db: str) -> None:
    await healthy.settle(ORG, "b", usage(101))
    await db.execute("UPDATE creditgate.pools SET granted = granted + 1 WHERE org_id = $1", ORG)
    code, text = await asyncio.to_thread(_main, ledger_db)
    assert code == 1
    assert text.splitlines() == [
        "verify: 1 invariant violation(s):",
        "  journal_fold_matches_pool org_v: pool (1001,140,0,1,v5) journal (1000,140,0,1,v5)",
        "verify: overage (a defect: the hold bounds every charge) in 1 org(s), 1 millicredits:",
        "  overage org_v: 1 request(s) charged above their hold or the credit left, 1 millicredits"]
