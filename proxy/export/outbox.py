"""The export outbox in PostgreSQL (proxy/db/migrations/0009_export.sql): what the deliverer claims and
marks, what /metrics reports about it, and the operator's dead-letter view.

Claiming is one statement: due rows are picked `FOR UPDATE SKIP LOCKED` and leased (their next attempt
moved `lease` seconds ahead, their attempt counted) before any HTTP call, so replicas and workers never
take the same row while a delivery is in flight, and a row whose deliverer died becomes due again when
its lease ends: at least once. No transaction stays open across a delivery.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from proxy.db.pool import UNAVAILABLE, Pool, Row, parse_serial_cursor
from proxy.errors import ProxyError
from proxy.export.events import Event

CHANNEL = "creditgate_export"
TIMEOUT_SECONDS = 5.0

_ENABLE = "UPDATE creditgate.export_settings SET enabled = true WHERE NOT enabled"
_DISABLE = """
WITH off AS (UPDATE creditgate.export_settings SET enabled = false)
SELECT count(*) AS waiting FROM creditgate.export_outbox WHERE delivered_at IS NULL AND dead_at IS NULL"""
_CLAIM = """
UPDATE creditgate.export_outbox o
   SET attempts = o.attempts + 1, next_attempt_at = pg_catalog.now() + make_interval(secs => $2)
  FROM (SELECT org_id, id FROM creditgate.export_outbox
         WHERE delivered_at IS NULL AND dead_at IS NULL AND next_attempt_at <= pg_catalog.now()
         ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
 WHERE o.org_id = due.org_id AND o.id = due.id
RETURNING o.org_id, o.id, o.code, o.transaction_id, o.occurred_at, o.properties::text AS properties, o.attempts
"""
_DELIVERED = """
UPDATE creditgate.export_outbox o
   SET delivered_at = pg_catalog.now(), last_status = d.status, last_error = NULL
  FROM unnest($1::text[], $2::bigint[], $3::int[]) AS d(org_id, id, status)
 WHERE o.org_id = d.org_id AND o.id = d.id AND o.delivered_at IS NULL
"""
_FAILED = """
UPDATE creditgate.export_outbox o
   SET next_attempt_at = pg_catalog.now() + make_interval(secs => f.delay), last_status = f.status,
       last_error = f.error, dead_at = CASE WHEN f.dead THEN pg_catalog.now() END
  FROM unnest($1::text[], $2::bigint[], $3::float8[], $4::int[], $5::text[], $6::bool[])
       AS f(org_id, id, delay, status, error, dead)
 WHERE o.org_id = f.org_id AND o.id = f.id AND o.delivered_at IS NULL
"""
_PRUNE = """
DELETE FROM creditgate.export_outbox o USING (
  SELECT org_id, id FROM creditgate.export_outbox
   WHERE delivered_at < pg_catalog.now() - make_interval(secs => $1) LIMIT $2) old
 WHERE o.org_id = old.org_id AND o.id = old.id
"""
_DEPTH = """
SELECT count(*) FILTER (WHERE dead_at IS NULL) AS pending,
       coalesce(extract(epoch FROM pg_catalog.now() - min(created_at) FILTER (WHERE dead_at IS NULL)), 0)::float8
         AS oldest_seconds,
       count(*) FILTER (WHERE dead_at IS NOT NULL) AS dead
  FROM creditgate.export_outbox WHERE delivered_at IS NULL
"""
_COUNT_ALERTS = """
UPDATE creditgate.budget_alerts a SET counted = true
  FROM (SELECT org_id, id FROM creditgate.budget_alerts WHERE NOT counted ORDER BY id LIMIT $1
           FOR UPDATE SKIP LOCKED) todo
 WHERE a.org_id = todo.org_id AND a.id = todo.id
RETURNING a.scope, a.threshold
"""
_COLUMNS = """org_id, id::text AS id, code, transaction_id, occurred_at, properties::text AS properties, attempts,
       last_status, last_error, created_at, dead_at"""
_DEAD_LETTERS = f"""
SELECT {_COLUMNS} FROM creditgate.export_outbox
 WHERE dead_at IS NOT NULL AND ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2
"""
_RETRY = f"""
UPDATE creditgate.export_outbox SET dead_at = NULL, attempts = 0, next_attempt_at = pg_catalog.now()
 WHERE id = $1 AND dead_at IS NOT NULL
RETURNING {_COLUMNS}
"""


@dataclass(slots=True)
class Listening:
    lost: bool = False


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt: retry after `delay` seconds, or dead-letter it (`dead`)."""

    org_id: str
    id: int
    delay: float
    status: int | None
    error: str
    dead: bool


class PgOutbox:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def _fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        async with self._pool.acquire(timeout=TIMEOUT_SECONDS) as conn:
            return list(await conn.fetch(query, *args, timeout=TIMEOUT_SECONDS))

    async def enable(self) -> None:
        """From now on settlements are written to the outbox (a replica with an export URL started)."""
        await self._fetch(_ENABLE)

    async def disable(self) -> int:
        """From now on nothing is written to the outbox (`creditgate export-off`); returns the events still
        waiting for delivery (they stay, and are delivered by any replica with an export URL)."""
        return int((await self._fetch(_DISABLE))[0]["waiting"])

    async def claim(self, limit: int, lease_seconds: float) -> list[Event]:
        rows = await self._fetch(_CLAIM, limit, lease_seconds)
        return [Event(r["org_id"], r["id"], r["code"], r["transaction_id"], r["occurred_at"],
                      orjson.loads(r["properties"]), r["attempts"]) for r in rows]

    async def delivered(self, events: Sequence[tuple[Event, int]]) -> None:
        if events:
            await self._fetch(_DELIVERED, [e.org_id for e, _ in events], [e.id for e, _ in events],
                              [status for _, status in events])

    async def failed(self, failures: Sequence[Failure]) -> None:
        if failures:
            await self._fetch(_FAILED, [f.org_id for f in failures], [f.id for f in failures],
                              [f.delay for f in failures], [f.status for f in failures],
                              [f.error for f in failures], [f.dead for f in failures])

    async def prune(self, retention_seconds: float, limit: int = 1000) -> int:
        """Deletes up to `limit` rows delivered more than `retention_seconds` ago; how many it deleted."""
        async with self._pool.acquire(timeout=TIMEOUT_SECONDS) as conn:
            done = await conn.execute(_PRUNE, retention_seconds, limit, timeout=TIMEOUT_SECONDS)
        return int(done.split()[-1])

    async def depth(self) -> tuple[int, float, int]:
        """Events waiting (not delivered, not dead), the oldest one's age in seconds, dead letters."""
        row = (await self._fetch(_DEPTH))[0]
        return int(row["pending"]), float(row["oldest_seconds"]), int(row["dead"])

    async def count_alerts(self, limit: int = 500) -> list[tuple[str, int]]:
        """Budget alerts fired since the last call, each taken by exactly one replica: (scope, threshold)."""
        return [(r["scope"], r["threshold"]) for r in await self._fetch(_COUNT_ALERTS, limit)]

    @asynccontextmanager
    async def listen(self, wake: Callable[[], None]) -> AsyncIterator[Listening]:
        """Holds one connection that LISTENs on the outbox's channel; `wake()` runs on every NOTIFY (one per
        transaction that wrote rows) and when the connection is lost (`lost` is then set, so the caller
        listens again on a fresh one at once). The connection is returned to the pool on exit."""
        state = Listening()
        async with self._pool.acquire(timeout=TIMEOUT_SECONDS) as conn:

            def notified(*_: Any) -> None:
                wake()

            def terminated(*_: Any) -> None:
                state.lost = True
                wake()

            conn.add_termination_listener(terminated)
            await conn.add_listener(CHANNEL, notified)
            try:
                yield state
            finally:
                if not state.lost:  # a lost connection is already out of the pool's hands
                    conn.remove_termination_listener(terminated)
                    await conn.remove_listener(CHANNEL, notified)

    # ------------------------------------------------------------------ the operator's dead-letter view

    async def _admin(self, query: str, *args: object) -> list[Row]:
        try:
            rows = await self._fetch(query, *args)
        except UNAVAILABLE as exc:
            raise ProxyError.ledger_unavailable() from exc
        return [{**dict(r), "properties": orjson.loads(r["properties"])} for r in rows]

    async def dead_letters(self, limit: int, after: str | None) -> tuple[list[Row], bool]:
        """Dead-lettered events, newest first; `after` is the last row's "id"."""
        rows = await self._admin(_DEAD_LETTERS, parse_serial_cursor(after), limit + 1)
        return rows[:limit], len(rows) > limit

    async def retry(self, event_id: int) -> Row | None:
        """Puts a dead-lettered event back in the queue, due now with its attempts reset; None when no
        dead letter has that id."""
        rows = await self._admin(_RETRY, event_id)
        return rows[0] if rows else None
