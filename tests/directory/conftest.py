"""A migrated database per test and the PostgreSQL directory on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from proxy.db.migrate import migrate
from proxy.directory.pg import PgDirectory


@pytest.fixture
async def pool(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate(fresh_db)
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
def directory(pool: asyncpg.Pool) -> PgDirectory:
    return PgDirectory(pool)
