"""The asyncpg pool and what every store shares about PostgreSQL: which failures mean "the database is
unavailable" (the contract's 503 `ledger_unavailable`, never a 500), the row type of the admin and
caller listings, and the bigint cursors of the listings ordered by a serial id.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from proxy.errors import ProxyError

Row = dict[str, Any]
STATEMENT_TIMEOUT_MS = 2000
MAX_SERIAL = 2**63 - 1  # a bigint: journal and audit ids
_SERIAL = re.compile(r"[1-9][0-9]{0,18}")  # ASCII digits only

# The database is unreachable, overloaded or shutting down: connection lost or refused, timeouts,
# statement_timeout (QueryCanceled, an OperatorIntervention), deadlock/serialization (never expected;
# retryable). The one list the ledger and the directory both use.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # after pg_terminate_backend a pooled connection can surface as InternalClientError
    # ("cannot switch to state ..."; MagicStack/asyncpg#1069): a disconnect, not a bug of ours
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.InsufficientResourcesError,
)


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 8) -> asyncpg.Pool:
    """An asyncpg pool: statement timeout 2 s, synchronous commit on, READ COMMITTED."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, timeout=STATEMENT_TIMEOUT_MS / 1000 + 1,
        server_settings={"statement_timeout": str(STATEMENT_TIMEOUT_MS), "synchronous_commit": "on",
                         "default_transaction_isolation": "read committed",
                         "application_name": "creditgate-ledger"},
    )
    assert pool is not None
    return pool


def serial_cursor(value: str) -> bool:
    """A cursor of a listing ordered by a bigint id (the journal, the audit log): its decimal text."""
    return bool(_SERIAL.fullmatch(value)) and int(value) <= MAX_SERIAL


def parse_serial_cursor(after: str | None) -> int | None:
    """The bigint behind a `serial_cursor`; anything else is 400 (never silently the first page)."""
    if after is None:
        return None
    if not serial_cursor(after):
        raise ProxyError.invalid_value("after", "'after' must be a cursor from a previous page.")
    return int(after)


class Database:
    """The asyncpg pool, built before it is opened (as the upstream session is): the stores take it at
    construction and acquire connections from it once the app's lifespan has opened it."""

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 16) -> None:
        self._dsn, self._min_size, self._max_size = dsn, min_size, max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(self._dsn, min_size=self._min_size, max_size=self._max_size)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Database.open() has not run (the app's lifespan opens it)")
        return self._pool

    def acquire(self, *, timeout: float | None = None) -> Any:
        """A connection as `asyncpg.Pool.acquire` gives it (`async with db.acquire() as conn`)."""
        return self.pool.acquire(timeout=timeout)

    async def postgres(self) -> None:
        """The readiness check of PostgreSQL: one round trip."""
        async with self.acquire(timeout=2.0) as conn:
            await conn.fetchval("SELECT 1")


Pool = asyncpg.Pool | Database
"""What the stores acquire connections from: the app's `Database`, or a bare asyncpg pool (tests, bench)."""
