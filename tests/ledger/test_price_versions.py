"""Price versions in the ledger (migration 0006): every hold and usage record names the prices it was
charged with, whoever writes the record (the settle, the sweeper, a late settle replacing the sweeper's
estimate), it never changes afterwards, and each version's table is stored once and never altered."""

from __future__ import annotations

import dataclasses

import asyncpg
import pytest

from proxy.ledger.pg import PgLedger
from tests.ledger.conftest import add_member, add_org, hold, set_clock, usage, violations

ORG, USER = "org_pv", "usr_pv"
OLD, NEW = "pv_00000000000000a1", "pv_00000000000000b2"


@pytest.fixture
async def org(db: asyncpg.Connection, ledger: PgLedger) -> PgLedger:
    await add_org(db, ORG)
    await add_member(db, ORG, USER)
    await ledger.grant(ORG, 100_000, "seed", "g1", None, "operator")
    return ledger


async def versions(db: asyncpg.Connection, rid: str) -> tuple[str | None, str | None]:
    row = await db.fetchrow(
        """SELECT h.price_version AS held, u.price_version AS charged FROM creditgate.holds h
           LEFT JOIN creditgate.usage_records u ON u.hold_id = h.id
            WHERE h.org_id = $1 AND h.request_id = $2 ORDER BY h.id DESC LIMIT 1""", ORG, rid)
    assert row is not None
    return row["held"], row["charged"]


async def test_each_request_keeps_the_version_it_was_held_at(org: PgLedger, db: asyncpg.Connection) -> None:
    """Two requests of one member at two versions, settled in the other order: each record keeps its own."""
    await org.reserve(dataclasses.replace(hold(ORG, USER, "r-old", 300), price_version=OLD))
    await org.reserve(dataclasses.replace(hold(ORG, USER, "r-new", 300), price_version=NEW))
    await org.settle(ORG, "r-new", usage(120))
    await org.settle(ORG, "r-old", usage(100))
    assert await versions(db, "r-old") == (OLD, OLD)
    assert await versions(db, "r-new") == (NEW, NEW)
    assert [r["price_version"] for r in await org.usage(ORG, group_by="price_version", user_id=None, start=None,
                                                         end=None)] == [OLD, NEW]
    record = await org.request(ORG, "r-new")
    assert record is not None and (record["price_version"], record["charged_millicredits"]) == (NEW, 120)
    entries, _ = await org.entries(ORG, user_id=USER, limit=10, after=None)
    assert [(e["kind"], e["request_id"], e["price_version"]) for e in entries] == [
        ("post", "r-old", OLD), ("post", "r-new", NEW), ("hold", "r-new", NEW), ("hold", "r-old", OLD)]
    assert await violations(db) == []


async def test_the_sweeper_and_a_late_settle_keep_the_held_version(org: PgLedger, db: asyncpg.Connection) -> None:
    await org.reserve(dataclasses.replace(hold(ORG, USER, "r-swept", 500), price_version=OLD))
    await set_clock(db, 3600)  # past its expiry: the sweeper settles it from the database alone
    assert await org.expire() == (1, 0)
    assert await versions(db, "r-swept") == (OLD, OLD)
    await org.settle(ORG, "r-swept", usage(40))  # the real usage replaces the estimate, once
    row = await db.fetchrow("SELECT usage_source, charged, price_version, corrected_at IS NOT NULL AS corrected "
                            "FROM creditgate.usage_records WHERE org_id = $1 AND request_id = 'r-swept'", ORG)
    assert dict(row) == {"usage_source": "provider", "charged": 40, "price_version": OLD, "corrected": True}
    await set_clock(db, None)
    assert await violations(db) == []


async def test_a_request_without_a_version_records_none(org: PgLedger, db: asyncpg.Connection) -> None:
    """Callers that send no version (and rows from before 0006) carry NULL, never another request's."""
    await org.reserve(hold(ORG, USER, "r-none", 100))
    await org.settle(ORG, "r-none", usage(10))
    assert await versions(db, "r-none") == (None, None)


async def test_a_held_or_recorded_version_cannot_change(org: PgLedger, db: asyncpg.Connection) -> None:
    await org.reserve(dataclasses.replace(hold(ORG, USER, "r1", 100), price_version=OLD))
    with pytest.raises(asyncpg.RaiseError, match="identity fields are immutable"):
        await db.execute("UPDATE creditgate.holds SET price_version = $1 WHERE request_id = 'r1'", NEW)
    await org.settle(ORG, "r1", usage(10))
    with pytest.raises(asyncpg.RaiseError, match="is final"):
        await db.execute("UPDATE creditgate.usage_records SET price_version = $1 WHERE request_id = 'r1'", NEW)
    assert await versions(db, "r1") == (OLD, OLD)


async def test_a_table_is_stored_once_and_never_replaced(ledger: PgLedger, db: asyncpg.Connection) -> None:
    assert await ledger.record_price_version(OLD, '{"credits_per_usd":"1000"}') is True
    assert await ledger.record_price_version(OLD, '{"credits_per_usd":"1000"}') is False  # every replica calls it
    with pytest.raises(ValueError, match=f"price version {OLD} is already stored with another table"):
        await ledger.record_price_version(OLD, '{"credits_per_usd":"2000"}')
    await ledger.record_price_version(NEW, '{"credits_per_usd":"2000"}')
    rows, more = await ledger.price_versions(limit=1, after=None)
    assert ([r["version"] for r in rows], more) == ([NEW], True)
    rows, more = await ledger.price_versions(limit=5, after=rows[0]["id"])
    assert ([r["version"] for r in rows], more) == ([OLD], False)
    one = await ledger.price_version(OLD)
    assert one is not None and (one["version"], one["prices"]) == (OLD, '{"credits_per_usd":"1000"}')
    assert await ledger.price_version("pv_ffffffffffffffff") is None
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("UPDATE creditgate.price_versions SET prices = '{}'")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("DELETE FROM creditgate.price_versions")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("SELECT creditgate.record_price_version('v1', '{}')")
