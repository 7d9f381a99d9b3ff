"""Migrations: applied once each, in order, by replicas racing to start; an applied file that changed stops them;
what a database has applied, against this release (for /readyz); an unreachable database is one line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from devstack.services import free_port
from proxy.config.settings import StartupError
from proxy.db.migrate import MigrationError, SchemaState, discover, migrate, schema_state


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


async def test_the_schema_state_compares_what_was_applied_with_this_release(fresh_db: str, tmp_path: Path) -> None:
    names = [m.name for m in discover()]
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await schema_state(conn) == SchemaState(None, names[-1], tuple(names), ())
        for m in discover()[:2]:
            (tmp_path / m.name).write_text(m.sql)
        await migrate(fresh_db, tmp_path)
        older = await schema_state(conn)
        assert older == SchemaState(names[1], names[-1], tuple(names[2:]), ())
        assert not older.current
        await migrate(fresh_db)
        await conn.execute("INSERT INTO creditgate.schema_migrations (name, checksum) VALUES ('9999_later.sql', '')")
        newer = await schema_state(conn)
        assert newer == SchemaState("9999_later.sql", names[-1], (), ("9999_later.sql",))
        assert newer.current and newer.describe() == f"schema at 9999_later.sql, newer than this release's {names[-1]}"
    finally:
        await conn.close()


def test_the_schema_state_says_what_to_run() -> None:
    assert SchemaState(None, "0005_x.sql", ("0001_a.sql",), ()).describe() == (
        "schema not migrated, this release needs 0005_x.sql: run `creditgate migrate`")
    assert SchemaState("0003_c.sql", "0005_x.sql", ("0004_d.sql", "0005_x.sql"), ()).describe() == (
        "schema at 0003_c.sql, this release needs 0005_x.sql (2 migration(s) pending): run `creditgate migrate`")
    assert SchemaState("0005_x.sql", "0005_x.sql", (), ()).describe() == "schema at 0005_x.sql"


async def test_migrate_without_postgres_is_one_line() -> None:
    port = free_port()
    with pytest.raises(StartupError) as failed:
        await migrate(f"postgresql://cg:hunter2@127.0.0.1:{port}/x")
    assert str(failed.value) == (f"cannot reach PostgreSQL at CREDITGATE_DATABASE_URL (127.0.0.1:{port}): "
                                 "connection refused")
