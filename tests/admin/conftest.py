"""Admin-area fixtures: a migrated fresh database, a PgDirectory, and an in-process admin app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from proxy.directory import PgDirectory

MIGRATIONS = Path(__file__).resolve().parents[2] / "proxy" / "migrations"


async def apply_migrations(dsn: str) -> None:
    """proxy.migrate.migrate when the ledger's migrator exists, else the directory's own files."""
    try:
        from proxy.migrate import migrate  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        conn = await asyncpg.connect(dsn)
        try:
            for path in sorted(MIGRATIONS.glob("000[13]_*.sql")):
                async with conn.transaction():
                    await conn.execute(path.read_text())
        finally:
            await conn.close()
    else:
        await migrate(dsn)


@pytest.fixture
async def pool(fresh_db: str) -> AsyncIterator[asyncpg.Pool]:
    await apply_migrations(fresh_db)
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
def directory(pool: asyncpg.Pool) -> PgDirectory:
    return PgDirectory(pool)
