"""Which org and member own each response id the gateway served on /v1/responses.

LiteLLM answers GET/DELETE /v1/responses/{id} and `previous_response_id` with the platform's key: it would
hand any caller any response. So the gateway records the id of every response it served (after the answer
is read, proxy/db/migrations/0007_responses.sql) and lets a caller reach only the ids recorded for them in
their active org. One statement per call; an unreachable database is 503 `ledger_unavailable`.
"""

from __future__ import annotations

from typing import Protocol

import asyncpg

from proxy.db.pool import Pool, fetch

TIMEOUT_SECONDS = 5.0
MAX_RESPONSE_ID = 1024

_REMEMBER = """
INSERT INTO creditgate.response_owners (response_id, org_id, user_id, request_id)
VALUES ($1, $2, $3, $4) ON CONFLICT (org_id, response_id) DO NOTHING"""
_OWNED = """
SELECT 1 FROM creditgate.response_owners
WHERE response_id = $1 AND org_id = $2 AND user_id = $3 AND deleted_at IS NULL"""
_FORGET = """
UPDATE creditgate.response_owners SET deleted_at = now()
WHERE response_id = $1 AND org_id = $2 AND user_id = $3 AND deleted_at IS NULL"""


class ResponseOwners(Protocol):
    async def remember(self, org_id: str, user_id: str, request_id: str, response_id: str) -> None: ...

    async def owned(self, org_id: str, user_id: str, response_id: str) -> bool: ...

    async def forget(self, org_id: str, user_id: str, response_id: str) -> None: ...


class PgResponseOwners:
    """ResponseOwners in PostgreSQL. An id first recorded for someone else stays theirs (no overwrite)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def _run(self, query: str, *args: object) -> list[asyncpg.Record]:
        return await fetch(self._pool, query, *args, timeout=TIMEOUT_SECONDS)

    async def remember(self, org_id: str, user_id: str, request_id: str, response_id: str) -> None:
        if 0 < len(response_id) <= MAX_RESPONSE_ID:
            await self._run(_REMEMBER, response_id, org_id, user_id, request_id)

    async def owned(self, org_id: str, user_id: str, response_id: str) -> bool:
        if not 0 < len(response_id) <= MAX_RESPONSE_ID or "\x00" in response_id:
            return False  # never recorded: not worth a query
        return bool(await self._run(_OWNED, response_id, org_id, user_id))

    async def forget(self, org_id: str, user_id: str, response_id: str) -> None:
        await self._run(_FORGET, response_id, org_id, user_id)
