"""Export fixtures: the ledger's (tests/ledger/conftest.py: a migrated fresh database, the real `PgLedger` on it,
a connection for setting up orgs and reading rows), and the outbox, turned on, and the alert stores on a pool."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from proxy.export.alerts import PgAlerts
from proxy.export.outbox import PgOutbox
from tests.ledger.conftest import db, ledger, ledger_db  # noqa: F401 - fixtures


@pytest.fixture
async def pool(ledger_db: str) -> AsyncIterator[asyncpg.Pool]:  # noqa: F811 - the fixture imported above
    pool = await asyncpg.create_pool(ledger_db, min_size=1, max_size=6)
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


async def rows(conn: asyncpg.Connection) -> list[dict[str, object]]:
    """The outbox, oldest first, with properties decoded."""
    import orjson

    found = await conn.fetch("SELECT org_id, code, transaction_id, properties::text AS p, attempts, delivered_at, "
                             "dead_at FROM creditgate.export_outbox ORDER BY id")
    return [{**dict(r), "p": orjson.loads(r["p"])} for r in found]
