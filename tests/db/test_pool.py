"""The Database the stores share: built before it is opened, one list of "unavailable" failures, bigint
cursors that are refused rather than silently read as the first page."""

from __future__ import annotations

import asyncpg
import pytest

from devstack.services import free_port
from proxy.db.pool import MAX_SERIAL, UNAVAILABLE, Database, parse_serial_cursor, serial_cursor
from proxy.errors import ProxyError


async def test_a_database_serves_once_opened_and_closes_twice_harmlessly(fresh_db: str) -> None:
    db = Database(fresh_db, max_size=2)
    with pytest.raises(RuntimeError, match="open"):
        db.acquire()
    await db.open()
    await db.postgres()
    async with db.acquire(timeout=2) as conn:
        assert await conn.fetchval("SELECT 41 + 1") == 42
    await db.close()
    await db.close()
    with pytest.raises(RuntimeError):
        db.acquire()


async def test_an_unreachable_database_fails_with_an_unavailable_error() -> None:
    db = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/x", max_size=1)
    with pytest.raises(UNAVAILABLE):
        await db.open()


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
