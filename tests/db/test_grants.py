"""`grant_runtime`: the runtime role gets rows, sequences and functions of schema creditgate, never DDL,
including on what later migrations create; a missing role or the owner itself is refused by name."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from devstack import services
from proxy.config.settings import ConfigError
from proxy.db.grants import grant_runtime
from proxy.db.migrate import discover, migrate


@dataclass
class Roles:
    owner_dsn: str
    app: str
    app_dsn: str


def _dsn(base: str, user: str) -> str:
    return base.replace("postgresql://postgres@", f"postgresql://{user}@", 1)


@pytest.fixture
async def roles(pg: services.Service, fresh_db: str) -> AsyncIterator[Roles]:
    """An owner role that owns the fresh database (it migrates) and a bare LOGIN role for the runtime; the
    database's TEMPORARY right is taken from PUBLIC, so nothing may lean on temporary tables."""
    tag = secrets.token_hex(3)
    owner, app = f"cg_owner_{tag}", f"cg_app_{tag}"
    db_name = fresh_db.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg.url)
    try:
        await admin.execute(f"CREATE ROLE {owner} LOGIN; CREATE ROLE {app} LOGIN")
        await admin.execute(f'ALTER DATABASE "{db_name}" OWNER TO {owner}')
        await admin.execute(f'REVOKE TEMPORARY ON DATABASE "{db_name}" FROM PUBLIC')
        yield Roles(_dsn(fresh_db, owner), app, _dsn(fresh_db, app))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        await admin.execute(f"DROP ROLE IF EXISTS {app}; DROP ROLE IF EXISTS {owner}")
        await admin.close()


async def test_the_runtime_role_gets_rows_sequences_and_functions_and_nothing_else(roles: Roles) -> None:
    await migrate(roles.owner_dsn)
    await grant_runtime(roles.owner_dsn, roles.app)
    await grant_runtime(roles.owner_dsn, roles.app)  # idempotent
    conn = await asyncpg.connect(roles.app_dsn)
    try:
        tables = await conn.fetch(
            """SELECT c.relname, c.relkind::text AS kind,
                      array(SELECT p FROM unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE',
                                                       'REFERENCES', 'TRIGGER']) p
                             WHERE has_table_privilege(c.oid, p)) AS rights
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'creditgate' AND c.relkind IN ('r', 'v')""")
        rights = {r["relname"]: r["rights"] for r in tables}
        assert rights.pop("schema_migrations") == ["SELECT"]
        assert {"pools", "holds", "journal", "invariant_violations"} <= set(rights)
        assert all(v == ["SELECT", "INSERT", "UPDATE", "DELETE"] for v in rights.values()), rights
        assert await conn.fetchval(
            """SELECT bool_and(has_sequence_privilege(c.oid, 'USAGE')) FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'creditgate' AND c.relkind = 'S'""")
        assert await conn.fetchval(
            """SELECT bool_and(has_function_privilege(p.oid, 'EXECUTE')) FROM pg_proc p
                 JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'creditgate'""")
        assert await conn.fetchval("SELECT has_schema_privilege('creditgate', 'USAGE')")
        assert not await conn.fetchval("SELECT has_schema_privilege('creditgate', 'CREATE')")
        assert not await conn.fetchval("SELECT has_database_privilege(current_database(), 'CREATE')")
        assert not await conn.fetchval("SELECT has_database_privilege(current_database(), 'TEMPORARY')")
        for ddl in ("CREATE TABLE creditgate.x (i int)", "CREATE TABLE public.x (i int)", "CREATE TEMP TABLE x (i int)",
                    "CREATE SCHEMA x", "DROP TABLE creditgate.pools", "TRUNCATE creditgate.clock_skew",
                    "ALTER TABLE creditgate.orgs ADD COLUMN x int",
                    "INSERT INTO creditgate.schema_migrations (name, checksum) VALUES ('9999_x.sql', '')"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(ddl)
    finally:
        await conn.close()


async def test_what_a_later_migration_creates_is_granted_by_default(roles: Roles, tmp_path: Path) -> None:
    for m in discover():
        (tmp_path / m.name).write_text(m.sql)
    await migrate(roles.owner_dsn, tmp_path)
    await grant_runtime(roles.owner_dsn, roles.app)
    (tmp_path / "9999_later.sql").write_text(
        "CREATE TABLE creditgate.later (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);\n"
        "CREATE FUNCTION creditgate.later_count() RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM "
        "creditgate.later $$;\n"
        "REVOKE EXECUTE ON FUNCTION creditgate.later_count() FROM PUBLIC;\n")
    assert await migrate(roles.owner_dsn, tmp_path) == ["9999_later.sql"]
    conn = await asyncpg.connect(roles.app_dsn)
    try:
        await conn.execute("INSERT INTO creditgate.later (v) VALUES ('a'), ('b')")
        await conn.execute("UPDATE creditgate.later SET v = 'c' WHERE v = 'b'")
        await conn.execute("DELETE FROM creditgate.later WHERE v = 'a'")
        assert await conn.fetchval("SELECT creditgate.later_count()") == 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("TRUNCATE creditgate.later")
    finally:
        await conn.close()


async def test_a_missing_role_or_the_owner_itself_is_refused_by_name(roles: Roles) -> None:
    await migrate(roles.owner_dsn)
    with pytest.raises(ConfigError, match=r"^--grant cg_nobody: no such database role \(create it first"):
        await grant_runtime(roles.owner_dsn, "cg_nobody")
    owner = roles.owner_dsn.split("//", 1)[1].split("@", 1)[0]
    with pytest.raises(ConfigError, match=f"^--grant {owner}: that is the role running migrate; grant a separate"):
        await grant_runtime(roles.owner_dsn, owner)
