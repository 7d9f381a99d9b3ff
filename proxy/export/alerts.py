"""Budget alerts as the admin API reads and configures them (proxy/db/migrations/0009_export.sql fires
them, in the transaction of the reserve or settlement that crossed a threshold).

A threshold is a whole percent from 1 to 100 of the pool's granted credit (spent + held) or of a member's
allocation limit (used + held in the period). Each fires once per period: a member's allocation period,
or for the pool the time since its latest grant (a top-up re-arms the pool's thresholds).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from proxy.db.pool import Pool, Row, fetch, parse_serial_cursor

DEFAULT_THRESHOLDS = (50, 80, 100)
TIMEOUT_SECONDS = 5.0

_LIST = """
SELECT id::text AS id, scope, nullif(user_id, '') AS user_id, threshold, period_start, used AS used_millicredits,
       budget AS budget_millicredits, fired_at
  FROM creditgate.budget_alerts
 WHERE org_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3
"""
_GET = "SELECT pool, allocation FROM creditgate.budget_thresholds WHERE org_id = $1"
_PUT = """
INSERT INTO creditgate.budget_thresholds (org_id, pool, allocation)
VALUES ($1, coalesce($2::int[], ARRAY[50, 80, 100]), coalesce($3::int[], ARRAY[50, 80, 100]))
ON CONFLICT (org_id) DO UPDATE SET pool = coalesce($2::int[], budget_thresholds.pool),
       allocation = coalesce($3::int[], budget_thresholds.allocation), updated_at = pg_catalog.now()
RETURNING pool, allocation
"""


class PgAlerts:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def _fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        return await fetch(self._pool, query, *args, timeout=TIMEOUT_SECONDS)

    async def alerts(self, org_id: str, limit: int, after: str | None) -> tuple[list[Row], bool]:
        """The org's fired alerts, newest first; `after` is the last row's "id"."""
        rows = [dict(r) for r in await self._fetch(_LIST, org_id, parse_serial_cursor(after), limit + 1)]
        return rows[:limit], len(rows) > limit

    async def thresholds(self, org_id: str) -> Row:
        rows = await self._fetch(_GET, org_id)
        if not rows:
            return {"pool": list(DEFAULT_THRESHOLDS), "allocation": list(DEFAULT_THRESHOLDS)}
        return {"pool": list(rows[0]["pool"]), "allocation": list(rows[0]["allocation"])}

    async def set_thresholds(self, org_id: str, pool: Sequence[int] | None, allocation: Sequence[int] | None) -> Row:
        """Changes the scopes given (None leaves one as it is), each stored sorted without duplicates."""
        rows = await self._fetch(_PUT, org_id, _clean(pool), _clean(allocation))
        return {"pool": list(rows[0]["pool"]), "allocation": list(rows[0]["allocation"])}


def _clean(levels: Sequence[int] | None) -> list[int] | None:
    return None if levels is None else sorted(set(levels))
