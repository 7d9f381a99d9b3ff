"""What the console shows that the admin API has no route for: the org's grants, its recent requests, its
holds in flight, and usage split into platform and BYOK by day. Read-only SQL over the ledger's tables
(and the audit log, for a form sent twice); everything else on the pages comes from the very
store calls the admin routes make.

Every query is scoped by org id (the caller was authorized for it first) and bounded by a LIMIT; an
unreachable database is 503 `ledger_unavailable`, as in the stores.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from proxy.db.pool import UNAVAILABLE, Pool, Row, fetch, parse_serial_cursor
from proxy.errors import ProxyError

TIMEOUT = 3.0
_GRANTS_SQL = """
SELECT id, kind, amount, reason, actor, expires_at, expired_at, forfeited, created_at
  FROM creditgate.grants WHERE org_id = $1 ORDER BY id DESC LIMIT $2"""
# newest first; a request's usage record joins its own hold (a voided id may have been reused)
_REQUESTS_SQL = """
SELECT h.id, h.request_id, h.user_id, h.key_id, h.state::text AS state, h.byok, h.amount, h.created_at,
       coalesce(u.model, h.model) AS model, u.prompt_tokens, u.completion_tokens, u.charged, u.usage_source
  FROM creditgate.holds h
  LEFT JOIN creditgate.usage_records u ON u.org_id = h.org_id AND u.request_id = h.request_id AND u.hold_id = h.id
 WHERE h.org_id = $1 AND ($2::bigint IS NULL OR h.id < $2) AND ($3::text IS NULL OR h.user_id = $3)
 ORDER BY h.id DESC LIMIT $4"""
_IN_FLIGHT_SQL = """
SELECT request_id, user_id, model, byok, amount, streamed_tokens, created_at, expires_at
  FROM creditgate.holds WHERE org_id = $1 AND state = 'pending' ORDER BY id DESC LIMIT $2"""
_SPLIT_SQL = """
SELECT to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, byok, count(*) AS requests,
       sum(charged)::bigint AS charged, sum(list_price)::bigint AS list_price
  FROM creditgate.usage_records
 WHERE org_id = $1 AND recorded_at >= $2 AND recorded_at < $3
 GROUP BY 1, 2 ORDER BY 1, 2"""

# the first audit line of a console form's one-time token (the audit log has no index on target: only
# onboarding and key creation posts read it)
_AUDITED_SQL = """
SELECT org_id, detail::text AS detail FROM creditgate.admin_audit WHERE action = $1 AND target = $2
 ORDER BY id LIMIT 1"""
_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"


class ConsoleReads:
    def __init__(self, pool: Pool, timeout: float = TIMEOUT) -> None:
        self._pool = pool
        self._timeout = timeout

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await fetch(self._pool, sql, *args, timeout=self._timeout)

    async def grants(self, org_id: str, limit: int = 100) -> Sequence[Row]:
        """Grants and adjustments, newest first, with their expiry and what expiry forfeited."""
        return [{**dict(r), "id": f"grant_{r['id']}"} for r in await self._fetch(_GRANTS_SQL, org_id, limit)]

    async def requests(self, org_id: str, *, limit: int, after: str | None,
                       user_id: str | None = None) -> tuple[Sequence[Row], bool]:
        """Recent requests (holds and their settlements), newest first; `after` is the last row's id."""
        rows = await self._fetch(_REQUESTS_SQL, org_id, parse_serial_cursor(after), user_id, limit + 1)
        out = [{**dict(r), "id": str(r["id"])} for r in rows[:limit]]
        return out, len(rows) > limit

    async def in_flight(self, org_id: str, limit: int = 100) -> Sequence[Row]:
        """Holds not yet settled or voided (requests running now, or past their expiry awaiting the sweeper)."""
        return [dict(r) for r in await self._fetch(_IN_FLIGHT_SQL, org_id, limit)]

    async def platform_and_byok(self, org_id: str, start: datetime, end: datetime) -> Sequence[Row]:
        """Per UTC day and byok flag: requests, charged (BYOK is never charged) and list price."""
        return [dict(r) for r in await self._fetch(_SPLIT_SQL, org_id, start, end)]

    async def audited(self, action: str, target: str) -> Row | None:
        """The first audit line of `action` on `target` (its org_id and detail), if any."""
        rows = await self._fetch(_AUDITED_SQL, action, target)
        return None if not rows else {"org_id": rows[0]["org_id"], "detail": orjson.loads(rows[0]["detail"])}

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[None]:
        """Runs the body while holding a transaction-level advisory lock on `name`: two bodies with the same
        name, in any process, run one after the other. The lock ends with the transaction, however the body
        ends (nothing else is written in that transaction)."""
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
                await conn.execute(_LOCK_SQL, name, timeout=self._timeout)
                yield
        except UNAVAILABLE as exc:
            raise ProxyError.ledger_unavailable() from exc
