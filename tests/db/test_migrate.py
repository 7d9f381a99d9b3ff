"""Migrations: applied once each, in order, by replicas racing to start; an applied file that changed stops them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from proxy.db.migrate import MigrationError, discover, migrate


async def test_replicas_migrating_at_once_apply_each_file_once(fresh_db: str) -> None:
    results = await asyncio.gather(*(migrate(fresh_db) for _ in range(4)))
    names = [m.name for m in discover()]
    assert sorted(results, key=len) == [[], [], [], names]
    conn = await asyncpg.connect(fresh_db)
    assert await conn.fetchval("SELECT count(*) FROM creditgate.schema_migrations") == len(names)
    await conn.close()


async def test_an_applied_migration_whose_file_changed_stops_migrate(fresh_db: str, tmp_path: Path) -> None:
    for m in discover():
        (tmp_path / m.name).write_text(m.sql)
    assert await migrate(fresh_db, tmp_path) == [m.name for m in discover()]
    first = sorted(tmp_path.iterdir())[0]
    first.write_text(first.read_text() + "\n-- an edit after the fact\n")
    with pytest.raises(MigrationError) as info:
        await migrate(fresh_db, tmp_path)
    assert str(info.value).startswith(f"migration {first.name} was edited after it was applied (recorded sha256 ")
    assert str(info.value).endswith("restore the file and put the change in a new migration")
    first.unlink()
    with pytest.raises(MigrationError, match=f"^migration {first.name} is applied to this database but not in this "
                                             "release: run the release that has it$"):
        await migrate(fresh_db, tmp_path)
