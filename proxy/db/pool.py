"""The asyncpg pool and what every store shares about PostgreSQL: which failures mean "the database is
unavailable" (the contract's 503 `ledger_unavailable`, never a 500), the row type of the admin and
caller listings, the bigint cursors of the listings ordered by a serial id, and reaching PostgreSQL at
start-up (`wait_for_postgres`: one line naming CREDITGATE_DATABASE_URL, never its password).
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from typing import Any

import asyncpg

from proxy.config.settings import StartupError
from proxy.errors import ProxyError

Row = dict[str, Any]
STATEMENT_TIMEOUT_MS = 2000
MAX_SERIAL = 2**63 - 1  # a bigint: journal and audit ids
_SERIAL = re.compile(r"[1-9][0-9]{0,18}")  # ASCII digits only


class DatabaseClosed(ConnectionError):
    """The pool is not open (before the lifespan opened it, or after it closed it). A ConnectionError, so
    every store answers it as any unreachable database: 503 `ledger_unavailable`, never a 500."""


# The schema is older than this release (`creditgate migrate` has not run): what it names does not exist
# yet. The ledger is unavailable, exactly as if the database were down; /readyz says which migration is
# missing (proxy/ops/health.py) and the app answers 503 until it is applied.
SCHEMA_MISSING: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.UndefinedTableError,
    asyncpg.exceptions.UndefinedFunctionError,
    asyncpg.exceptions.UndefinedColumnError,
    asyncpg.exceptions.UndefinedObjectError,
    asyncpg.exceptions.InvalidSchemaNameError,
)

# The database is unreachable, overloaded or shutting down: connection lost or refused, timeouts,
# statement_timeout (QueryCanceled, an OperatorIntervention), deadlock/serialization (never expected;
# retryable), or not migrated. The one list the ledger and the directory both use.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    *SCHEMA_MISSING,
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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Releases a connection without asyncpg's reset query (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`). That query is one more round trip per release, and the caller waits for it: in a py-spy
    profile of the gateway under 64 slow streams `Pool.release` took 12% of its samples, and a pooled
    `SELECT 1` cost 140-190 µs of client CPU and 80 µs of PostgreSQL's with it, 75 and 30-40 without.
    Nothing leaves session state on a pooled connection: settings are transaction-local
    (`set_config(..., true)`), `migrate` takes its advisory lock on its own connection, and the outbox's
    LISTEN is undone by its `remove_listener` (one left behind only receives notifications nobody reads).
    asyncpg still rolls back a transaction left open before it calls this."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 8) -> asyncpg.Pool:
    """An asyncpg pool: statement timeout 2 s, synchronous commit on, READ COMMITTED, no reset query on
    release (`_keep_session`)."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, timeout=STATEMENT_TIMEOUT_MS / 1000 + 1, reset=_keep_session,
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
        """Raises `StartupError` (one line naming CREDITGATE_DATABASE_URL) when PostgreSQL cannot be reached."""
        if self._pool is None:
            try:
                self._pool = await create_pool(self._dsn, min_size=self._min_size, max_size=self._max_size)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise StartupError(unreachable_line(self._dsn, exc)) from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise DatabaseClosed("the database pool is not open (the app's lifespan opens it)")
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


async def fetch(pool: asyncpg.Pool | Database, query: str, *args: object, timeout: float) -> list[asyncpg.Record]:
    """One statement on a pooled connection, `timeout` seconds to get the connection and again to run it.
    PostgreSQL unreachable or too slow is 503 `ledger_unavailable` (fail closed); any other database error
    propagates as it is."""
    try:
        async with pool.acquire(timeout=timeout) as conn:
            return list(await conn.fetch(query, *args, timeout=timeout))
    except UNAVAILABLE as exc:
        raise ProxyError.ledger_unavailable() from exc


# ------------------------------------------------------------------ start-up: reach PostgreSQL or say why

# worth waiting for: the server is not up yet, or is still starting (a sidecar's PostgreSQL, a container)
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError,
    asyncpg.exceptions.TooManyConnectionsError,
)


def dsn_target(dsn: str) -> str:
    """Where a DSN points, as `host:port` text without the user or password (any credentials before `@`
    are cut off); "the local socket" for a DSN without a host."""
    rest = dsn.partition("://")[2]
    netloc = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    return netloc or "the local socket"


def reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words that never quote the server's or the DSN's text."""
    if isinstance(exc, ProxyError):
        return exc.code or exc.type
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return "the server refused the user or password"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return "the database does not exist"
    if isinstance(exc, asyncpg.CannotConnectNowError):
        return "the server is starting up or shutting down"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def unreachable_line(dsn: str, exc: BaseException) -> str:
    return f"cannot reach PostgreSQL at CREDITGATE_DATABASE_URL ({dsn_target(dsn)}): {reason(exc)}"


async def wait_for_postgres(dsn: str, wait_seconds: float, *, on_wait: Callable[[str], None] | None = None) -> None:
    """Connect once, retrying for up to `wait_seconds` while the failure is one that time can fix (refused,
    timed out, starting up); a wrong password or database fails at once. Raises `StartupError`.
    `on_wait(line)` is called once, the first time it has to wait."""
    loop = asyncio.get_running_loop()
    deadline, delay, waited = loop.time() + wait_seconds, 0.25, False
    while True:
        try:
            conn = await asyncpg.connect(dsn, timeout=min(5.0, max(wait_seconds, 1.0)))
        except _TRANSIENT as exc:
            left = deadline - loop.time()
            if left <= 0:
                raise StartupError(unreachable_line(dsn, exc)) from None
            if not waited and on_wait is not None:
                on_wait(unreachable_line(dsn, exc))
            waited = True
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StartupError(unreachable_line(dsn, exc)) from None
        else:
            await conn.close()
            return
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, 2.0)
