"""The signed-out sessions store on the real PostgreSQL: a nonce is refused once signed out and until its
session's expiry, signing out twice is one row, and each sign-out removes rows whose sessions expired."""

from __future__ import annotations

import time

import asyncpg
import pytest

from devstack import services
from proxy.console.signouts import PURGE, PgSignOuts
from proxy.errors import ProxyError


async def test_signed_out_until_expiry_and_expired_rows_are_removed(pool: asyncpg.Pool) -> None:  # tests/conftest.py
    store, now = PgSignOuts(pool), int(time.time())
    assert await store.signed_out("n1") is False
    await store.sign_out("n1", now + 3600)
    await store.sign_out("n1", now + 3600)  # a second sign-out of the same session (two tabs)
    assert await store.signed_out("n1") is True and await store.signed_out("n2") is False
    async with pool.acquire() as conn:
        await conn.execute("""INSERT INTO creditgate.console_signouts (nonce, expires_at)
                              SELECT 'old' || i, now() - interval '1 second' FROM generate_series(1, $1) i""",
                           PURGE + 5)
        await store.sign_out("n2", now + 3600)
        left = await conn.fetchval("SELECT count(*) FROM creditgate.console_signouts WHERE expires_at < now()")
        assert left == 5  # at most PURGE removed per sign-out
        assert await conn.fetchval("SELECT count(*) FROM creditgate.console_signouts WHERE expires_at > now()") == 2


async def test_unreachable_database_is_ledger_unavailable(pg: services.Service) -> None:
    closed = await asyncpg.create_pool(pg.url, min_size=0, max_size=1)
    assert closed is not None
    await closed.close()
    store = PgSignOuts(closed)
    with pytest.raises(ProxyError) as caught:
        await store.signed_out("n1")
    assert caught.value.code == "ledger_unavailable"
