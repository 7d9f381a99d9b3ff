"""Schema migrations: `proxy/db/migrations/NNNN_*.sql`, applied in order, each exactly once.

`migrate(dsn)` takes a session-level advisory lock so replicas starting at once apply each file once;
every file runs in its own transaction and is recorded (with its SHA-256) in
`creditgate.schema_migrations` in that same transaction. A second run applies nothing.
`schema_state(conn)` compares what a database has applied with this release's files (for /readyz).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from proxy.config.settings import ConfigError, StartupError
from proxy.db.pool import unreachable_line

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# an arbitrary constant shared by every replica: "creditgate migrate" as a 64-bit advisory lock key
LOCK_KEY = 0x6372_6D69_6772_6174
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS) -> list[Migration]:
    """The migration files in order; two files with one number is an error."""
    found = sorted(p for p in directory.iterdir() if _NAME.match(p.name))
    numbers = [p.name[:4] for p in found]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"duplicate migration numbers in {directory}: {numbers}")
    return [Migration(p.name, p.read_text()) for p in found]


async def migrate(dsn: str, directory: Path = MIGRATIONS) -> list[str]:
    """Apply the pending migrations; returns the names applied (empty when up to date). PostgreSQL
    unreachable is `StartupError` (one line naming CREDITGATE_DATABASE_URL)."""
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StartupError(unreachable_line(dsn, exc)) from None
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            return await _apply(conn, discover(directory))
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    finally:
        await conn.close()


async def _apply(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await conn.execute(
        """CREATE SCHEMA IF NOT EXISTS creditgate;
           CREATE TABLE IF NOT EXISTS creditgate.schema_migrations (
             name        text PRIMARY KEY,
             checksum    text NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now())"""
    )
    rows = await conn.fetch("SELECT name, checksum FROM creditgate.schema_migrations")
    done = {r["name"]: r["checksum"] for r in rows}
    _check_history(done, migrations)
    applied: list[str] = []
    for m in migrations:
        if m.name in done:
            continue
        async with conn.transaction():
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO creditgate.schema_migrations (name, checksum) VALUES ($1, $2)", m.name, m.checksum
            )
        applied.append(m.name)
    return applied


@dataclass(frozen=True, slots=True)
class SchemaState:
    """What a database has applied against what this release ships. `missing`: this release's
    migrations not applied (the schema is older: not ready); `unknown`: applied migrations this release
    does not have (a newer release migrated it; expected during a rolling upgrade, so still ready)."""

    found: str | None  # the newest migration applied, None when none is
    expected: str  # this release's newest migration
    missing: tuple[str, ...]
    unknown: tuple[str, ...]

    @property
    def current(self) -> bool:
        return not self.missing

    def describe(self) -> str:
        """One line for /readyz and the logs: what was found, what is expected, what to run."""
        if self.found is None:
            return f"schema not migrated, this release needs {self.expected}: run `creditgate migrate`"
        found = self.found
        if self.missing:
            return (f"schema at {found}, this release needs {self.expected} ({len(self.missing)} migration(s) "
                    "pending): run `creditgate migrate`")
        if self.unknown:
            return f"schema at {found}, newer than this release's {self.expected}"
        return f"schema at {self.expected}"


async def schema_state(conn: asyncpg.Connection, directory: Path = MIGRATIONS) -> SchemaState:
    """Read `creditgate.schema_migrations` (absent on a database never migrated) and compare it with the
    files of this release. Two round trips; creates nothing."""
    names = [m.name for m in discover(directory)]
    applied: set[str] = set()
    if await conn.fetchval("SELECT to_regclass('creditgate.schema_migrations') IS NOT NULL"):
        applied = {r["name"] for r in await conn.fetch("SELECT name FROM creditgate.schema_migrations")}
    return SchemaState(
        found=max(applied) if applied else None,
        expected=names[-1],
        missing=tuple(n for n in names if n not in applied),
        unknown=tuple(sorted(applied - set(names))),
    )


class MigrationError(ConfigError):
    """The database's migration history does not match this release's files."""


def _check_history(done: dict[str, str], migrations: list[Migration]) -> None:
    """An applied migration must be the file it was: an edit would leave this database different from every
    other one migrated from the same release, silently. One line per mismatch."""
    files = {m.name: m for m in migrations}
    problems = [
        f"migration {name} was edited after it was applied (recorded sha256 {recorded[:12]}, file "
        f"{files[name].checksum[:12]}): restore the file and put the change in a new migration"
        for name, recorded in sorted(done.items()) if name in files and files[name].checksum != recorded
    ]
    problems += [f"migration {name} is applied to this database but not in this release: run the release that has it"
                 for name in sorted(done) if name not in files]
    if problems:
        raise MigrationError("\n".join(problems))
