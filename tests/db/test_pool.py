"""The Database the stores share: built before it is opened, one list of "unavailable" failures (an older
schema and a closed pool included), bigint cursors that are refused rather than silently read as the first
page, and reaching PostgreSQL at start-up: one line naming the variable, never the password."""

from __future__ import annotations

import socket
import time

import asyncpg
import pytest

from devstack import services
from devstack.services import free_port
from proxy.config.settings import StartupError
from proxy.db.pool import (
    MAX_SERIAL,
    SCHEMA_MISSING,
    UNAVAILABLE,
    Database,
    DatabaseClosed,
    create_pool,
    dsn_target,
    parse_serial_cursor,
    reason,
    serial_cursor,
    wait_for_postgres,
)
from proxy.errors import ProxyError


async def test_a_database_serves_once_opened_and_closes_twice_harmlessly(fresh_db: str) -> None:
    """Before it opens and after it closes, it is an unreachable database (a 503 in every store), not a bug."""
    db = Database(fresh_db, max_size=2)
    with pytest.raises(DatabaseClosed, match="open"):
        db.acquire()
    await db.open()
    await db.postgres()
    async with db.acquire(timeout=2) as conn:
        assert await conn.fetchval("SELECT 41 + 1") == 42
    await db.close()
    await db.close()
    with pytest.raises(UNAVAILABLE):
        db.acquire()


async def test_a_release_rolls_back_what_was_left_open_without_a_reset_round_trip(fresh_db: str) -> None:
    """asyncpg's reset query (RESET ALL ...) is not sent on release; an open transaction is still rolled back."""
    pool = await create_pool(fresh_db, max_size=1)
    watcher = await asyncpg.connect(fresh_db)
    try:
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
            await conn.execute("CREATE TABLE t (n int)")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO t VALUES (1)")
        last = await watcher.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
        assert last == "ROLLBACK"
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid and not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM t") == 0
        assert await watcher.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid) == (
            "SELECT count(*) FROM t")
    finally:
        await watcher.close()
        await pool.close()


async def test_an_unreachable_database_fails_to_open_with_one_line_naming_the_variable() -> None:
    port = free_port()
    db = Database(f"postgresql://postgres:hunter2@127.0.0.1:{port}/x", max_size=1)
    with pytest.raises(StartupError) as failed:
        await db.open()
    assert str(failed.value) == (f"cannot reach PostgreSQL at CREDITGATE_DATABASE_URL (127.0.0.1:{port}): "
                                 "connection refused")


@pytest.mark.parametrize(("dsn", "target"), [
    ("postgresql://cg:p%40ss@db.internal:6543/creditgate?sslmode=require", "db.internal:6543"),
    ("postgres://cg:pa@ss@db/x", "db"),  # an unescaped @ in the password: cut at the last one
    ("postgresql://db.internal/creditgate", "db.internal"),
    ("postgresql:///creditgate?host=/var/run/postgresql", "the local socket"),
    ("redis://:secret@cache:6380/0", "cache:6380"),
    ("postgresql://[::1]:5432/x", "[::1]:5432"),
])
def test_where_a_dsn_points_never_shows_its_credentials(dsn: str, target: str) -> None:
    assert dsn_target(dsn) == target


async def test_wrong_credentials_or_database_fail_at_once_instead_of_waiting(pg: services.Service) -> None:
    base = pg.url.rsplit("/", 1)[0]
    started = time.monotonic()
    with pytest.raises(StartupError) as missing:
        await wait_for_postgres(f"{base}/no_such_database", 30)
    assert str(missing.value).endswith("): the database does not exist")
    assert time.monotonic() - started < 10
    waits: list[str] = []
    await wait_for_postgres(pg.url, 30, on_wait=waits.append)
    assert waits == []


def test_why_a_connection_failed_is_said_in_our_words() -> None:
    assert reason(ConnectionRefusedError("refused, postgresql://u:hunter2@h")) == "connection refused"
    assert reason(TimeoutError()) == "timed out"
    assert reason(socket.gaierror(-2, "Name or service not known")) == "unknown host"
    assert reason(ProxyError.ledger_unavailable()) == "ledger_unavailable"
    assert reason(RuntimeError("text with a secret")) == "RuntimeError"


def test_a_schema_older_than_the_release_counts_as_unavailable() -> None:
    for missing in (asyncpg.exceptions.UndefinedTableError, asyncpg.exceptions.UndefinedFunctionError,
                    asyncpg.exceptions.InvalidSchemaNameError):
        assert missing in SCHEMA_MISSING and missing in UNAVAILABLE
    assert issubclass(DatabaseClosed, UNAVAILABLE)


@pytest.mark.parametrize("cursor", ["1", "42", str(MAX_SERIAL)])
def test_serial_cursors(cursor: str) -> None:
    assert serial_cursor(cursor) and parse_serial_cursor(cursor) == int(cursor)


@pytest.mark.parametrize("cursor", ["0", "-1", "abc", "01", str(MAX_SERIAL + 1), "1" * 40, "١٢", " 1", ""])
def test_anything_else_is_400_after(cursor: str) -> None:
    assert not serial_cursor(cursor)
    with pytest.raises(ProxyError) as info:
        parse_serial_cursor(cursor)
    assert (info.value.status, info.value.code, info.value.param) == (400, "invalid_value", "after")


def test_no_cursor_is_the_first_page() -> None:
    assert parse_serial_cursor(None) is None
    assert asyncpg.InterfaceError in UNAVAILABLE and asyncpg.InternalClientError in UNAVAILABLE
