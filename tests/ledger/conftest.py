"""Ledger fixtures: a migrated fresh database per test, a `PgLedger` on it, and directory helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import pytest

from proxy.db.migrate import migrate
from proxy.ledger.pg import PgLedger
from proxy.ledger.types import HoldRequest, Settlement


@pytest.fixture
async def ledger_db(fresh_db: str) -> str:
    await migrate(fresh_db)
    return fresh_db


@pytest.fixture
async def ledger(ledger_db: str) -> AsyncIterator[PgLedger]:
    lg = await PgLedger.connect(ledger_db, hold_ttl_seconds=120)
    yield lg
    await lg.close()


@pytest.fixture
async def db(ledger_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(ledger_db)
    yield conn
    await conn.close()


async def add_org(conn: asyncpg.Connection, org: str, *, tier: str = "starter") -> None:
    await conn.execute("INSERT INTO creditgate.orgs (id, name, tier) VALUES ($1, $1, $2)", org, tier)


async def add_member(conn: asyncpg.Connection, org: str, user: str, *, limit: int | None = None,
                     period: str = "none") -> None:
    await conn.execute(
        "INSERT INTO creditgate.users (id, email) VALUES ($1, $1 || '@example.com') ON CONFLICT DO NOTHING", user)
    await conn.execute(
        """INSERT INTO creditgate.memberships (org_id, user_id, allocation_millicredits, allocation_period)
           VALUES ($1, $2, $3, $4)""", org, user, limit, period)


async def funded_member(conn: asyncpg.Connection, ledger: PgLedger, org: str, user: str, credit: int, *,
                        limit: int | None = None, period: str = "none", key: str = "g1") -> None:
    """A new org with one member (`limit`, `period`: their allocation) and `credit` millicredits granted."""
    await add_org(conn, org)
    await add_member(conn, org, user, limit=limit, period=period)
    await ledger.grant(org, credit, "seed", key, None, "operator")


async def set_clock(conn: asyncpg.Connection, skew_seconds: float | None) -> None:
    """Skew the database clock (`creditgate.now()`); None removes the skew."""
    await conn.execute("DELETE FROM creditgate.clock_skew")
    if skew_seconds is not None:
        await conn.execute("INSERT INTO creditgate.clock_skew (skew) VALUES (make_interval(secs => $1))",
                           float(skew_seconds))


def hold(org: str, user: str, rid: str, amount: int, *, prompt: int = 10, in_rate: str = "1",
         out_rate: str = "2", byok: bool = False) -> HoldRequest:
    return HoldRequest(org_id=org, user_id=user, key_id="key_test", request_id=rid, amount=amount,
                       model="fake-small", byok=byok, prompt_tokens=prompt, input_rate=Decimal(in_rate),
                       output_rate=Decimal(out_rate), list_input_rate=Decimal(in_rate),
                       list_output_rate=Decimal(out_rate))


def usage(charge: int, *, prompt: int = 10, completion: int = 5, source: str = "provider",
          list_price: int | None = None) -> Settlement:
    return Settlement(prompt_tokens=prompt, completion_tokens=completion, charge=charge,
                      list_price=charge if list_price is None else list_price, usage_source=source,
                      model="fake-small", provider="openai", deployment="dep-1")


async def violations(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT invariant, subject FROM creditgate.invariant_violations")
    return [f"{r['invariant']} {r['subject']}" for r in rows]


async def pool_state(conn: asyncpg.Connection, org: str) -> tuple[int, int, int, int]:
    r = await conn.fetchrow("SELECT granted, posted, pending, overage FROM creditgate.pools WHERE org_id = $1", org)
    assert r is not None
    return r["granted"], r["posted"], r["pending"], r["overage"]


async def set_clock_to(conn: asyncpg.Connection, target: object) -> None:
    """Skew the database clock so `creditgate.now()` reads `target` (a datetime) right now."""
    await conn.execute("DELETE FROM creditgate.clock_skew")
    await conn.execute("INSERT INTO creditgate.clock_skew (skew) VALUES ($1::timestamptz - pg_catalog.now())", target)


ORG, U1, U2 = "org_l", "usr_l1", "usr_l2"


async def seeded(db: asyncpg.Connection, ledger: PgLedger, credit: int, allocation: int) -> PgLedger:
    """ORG with `credit` millicredits and two members, U2 with an allocation of `allocation`."""
    await add_org(db, ORG)
    await add_member(db, ORG, U1)
    await add_member(db, ORG, U2, limit=allocation)
    await ledger.grant(ORG, credit, "seed", "g1", None, "operator")
    return ledger


@pytest.fixture
async def org(db: asyncpg.Connection, ledger: PgLedger) -> PgLedger:
    """An org with 10,000 millicredits and two members, the second with an allocation of 3,000."""
    return await seeded(db, ledger, 10_000, 3000)


@pytest.fixture
async def small_org(db: asyncpg.Connection, ledger: PgLedger) -> PgLedger:
    """1,000 millicredits; the second member's allocation 500."""
    return await seeded(db, ledger, 1000, 500)
