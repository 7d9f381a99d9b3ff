"""Export fixtures: a migrated fresh database with the outbox turned on, the real `PgLedger` on it, the
outbox and alert stores, and a connection for setting up orgs and reading rows."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from proxy.db.migrate import migrate
from proxy.export.alerts import PgAlerts
from proxy.export.outbox import PgOutbox
from proxy.ledger.pg import PgLedger


@pytest.fixture
async def export_db(fresh_db: str) -> str:
    await migrate(fresh_db)
    return fresh_db


@pytest.fixture
async def pool(export_db: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(export_db, min_size=1, max_size=6)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
async def outbox(pool: asyncpg.Pool) -> PgOutbox:
    store = PgOutbox(pool)
    await store.enable()
    return store


@pytest.fixture
def alerts(pool: asyncpg.Pool) -> PgAlerts:
    return PgAlerts(pool)


@pytest.fixture
async def ledger(export_db: str) -> AsyncIterator[PgLedger]:
    lg = await PgLedger.connect(export_db, hold_ttl_seconds=120)
    yield lg
    await lg.close()


@pytest.fixture
async def db(export_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(export_db)
    yield conn
    await conn.close()


async def rows(conn: asyncpg.Connection) -> list[dict[str, object]]:
    """The outbox, oldest first, with properties decoded."""
    import orjson

    found = await conn.fetch("SELECT org_id, code, transaction_id, properties::text AS p, attempts, delivered_at, "
                             "dead_at FROM creditgate.export_outbox ORDER BY id")
    return [{**dict(r), "p": orjson.loads(r["p"])} for r in found]
