"""The ledger's admin and caller-facing side (`LedgerAdmin` in proxy/api/stores.py): grants,
adjustments, balances, journal, request records, and the usage reads of proxy/ledger/usage.py. `PgLedger`
(proxy/ledger/pg.py) inherits it.

Amounts are integer millicredits. balance = granted - posted - overage; available = balance - held,
never shown below 0 (overage, a receivable, can make the balance negative).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from proxy.db.pool import UNAVAILABLE, Pool, Row, parse_serial_cursor
from proxy.errors import ProxyError
from proxy.ledger.usage import UsageQueries

_POOL_SQL = """SELECT granted, posted, pending, overage, version FROM creditgate.pools WHERE org_id = $1"""
_CREDITS_SQL = """
SELECT p.granted, p.posted, p.pending, p.overage, p.version, m.allocation_millicredits AS lim,
       coalesce(m.allocation_period, 'none') AS period, a.posted AS used, a.pending AS held,
       creditgate.period_end(coalesce(m.allocation_period, 'none'), creditgate.now()) AS resets_at,
       k.id AS key_id, k.limit_millicredits AS key_lim, k.limit_period AS key_period, ku.posted AS key_used,
       ku.pending AS key_held, creditgate.period_end(k.limit_period, creditgate.now()) AS key_resets_at
  FROM creditgate.pools p
  LEFT JOIN creditgate.memberships m ON m.org_id = p.org_id AND m.user_id = $2
  LEFT JOIN creditgate.allocation_usage a ON a.org_id = p.org_id AND a.user_id = $2
       AND a.period_start = creditgate.period_start(coalesce(m.allocation_period, 'none'), creditgate.now())
  LEFT JOIN creditgate.api_keys k ON k.id = $3
  LEFT JOIN creditgate.key_usage ku ON ku.org_id = p.org_id AND ku.key_id = k.id
       AND ku.period_start = creditgate.period_start(k.limit_period, creditgate.now())
 WHERE p.org_id = $1"""
# every member's allocation in the org (one member's with $2), with the same columns as _CREDITS_SQL
_ALLOCATIONS_SQL = """
SELECT m.user_id, p.granted, p.posted, p.pending, p.overage, p.version, m.allocation_millicredits AS lim,
       coalesce(m.allocation_period, 'none') AS period, a.posted AS used, a.pending AS held,
       creditgate.period_end(coalesce(m.allocation_period, 'none'), creditgate.now()) AS resets_at
  FROM creditgate.pools p
  JOIN creditgate.memberships m ON m.org_id = p.org_id
  LEFT JOIN creditgate.allocation_usage a ON a.org_id = p.org_id AND a.user_id = m.user_id
       AND a.period_start = creditgate.period_start(coalesce(m.allocation_period, 'none'), creditgate.now())
 WHERE p.org_id = $1 AND ($2::text IS NULL OR m.user_id = $2)"""
_REQUEST_SQL = """
SELECT h.request_id, h.state::text AS state, h.user_id, h.model AS held_model, h.prompt_tokens AS held_prompt,
       h.amount, h.byok, u.model, u.prompt_tokens, u.completion_tokens, u.charged, u.list_price, u.usage_source,
       h.price_version
  FROM creditgate.holds h
  LEFT JOIN creditgate.usage_records u ON u.org_id = h.org_id AND u.request_id = h.request_id AND u.hold_id = h.id
 WHERE h.org_id = $1 AND h.request_id = $2
 ORDER BY h.state = 'voided' AND u.hold_id IS NULL, h.id DESC LIMIT 1"""
# Pending holds, and those past their expiry by more than the ledger's grace (invariant 3, as
# `creditgate verify` reads it): one scan of the partial index holds_due (pending holds only).
_HOLD_COUNTS_SQL = """
SELECT count(*) AS open,
       count(*) FILTER (WHERE expires_at < creditgate.now() - (SELECT hold_grace FROM creditgate.ledger_settings))
         AS overdue
  FROM creditgate.holds WHERE state = 'pending'"""
# Accounts running low: pools of active orgs that were ever granted credit, measured against what was
# granted; allocations (a positive limit, active member of an active org) against the current period's
# limit. "low" is under a tenth left (exhausted ones included), "exhausted" is nothing left. One pass
# over pools and memberships, each allocation read by its primary key.
_LOW_CREDIT_SQL = """
WITH t AS (SELECT creditgate.now() AS now), accounts AS (
  SELECT 'pool' AS account, p.granted AS base, p.granted - p.posted - p.overage - p.pending AS available
    FROM creditgate.pools p JOIN creditgate.orgs o ON o.id = p.org_id
   WHERE p.granted > 0 AND NOT o.suspended
  UNION ALL
  SELECT 'allocation', m.allocation_millicredits,
         m.allocation_millicredits - coalesce(a.posted, 0) - coalesce(a.pending, 0)
    FROM creditgate.memberships m JOIN creditgate.orgs o ON o.id = m.org_id CROSS JOIN t
    LEFT JOIN creditgate.allocation_usage a ON a.org_id = m.org_id AND a.user_id = m.user_id
         AND a.period_start = creditgate.period_start(m.allocation_period, t.now)
   WHERE m.allocation_millicredits > 0 AND NOT m.suspended AND NOT o.suspended
)
SELECT account, count(*) FILTER (WHERE available * 10 < base) AS low,
       count(*) FILTER (WHERE available <= 0) AS exhausted
  FROM accounts GROUP BY account"""
# a journal entry of a request shows the price version of its hold (the newest one before it: a voided
# request id may be reused), one probe of holds_request per entry
_JOURNAL_SQL = """
SELECT j.*, (SELECT h.price_version FROM creditgate.holds h
              WHERE h.org_id = j.org_id AND h.request_id = j.request_id AND h.created_at <= j.created_at
              ORDER BY h.id DESC LIMIT 1) AS price_version
  FROM creditgate.journal j WHERE j.org_id = $1 AND ($2::text IS NULL OR j.user_id = $2)
   AND ($3::bigint IS NULL OR j.id < $3) ORDER BY j.id DESC LIMIT $4"""


def pool_row(r: asyncpg.Record) -> Row:
    balance = r["granted"] - r["posted"] - r["overage"]
    return {"balance": balance, "held": r["pending"], "available": max(0, balance - r["pending"]),
            "overage": r["overage"], "granted": r["granted"], "posted": r["posted"], "version": r["version"]}


def allocation_row(r: asyncpg.Record, pool_available: int) -> Row:
    """A member's allocation in millicredits: `limit` (null: unlimited within the pool), `used` (posted this
    period), `held`, `available` (the pool's when unlimited), `period`, `resets_at` (null for "none")."""
    used, held = r["used"] or 0, r["held"] or 0
    available = pool_available if r["lim"] is None else max(0, r["lim"] - used - held)
    return {"limit": r["lim"], "used": used, "held": held, "available": available, "period": r["period"],
            "resets_at": r["resets_at"]}


class LedgerQueries(UsageQueries):
    def __init__(self, pool: Pool, timeout: float) -> None:
        self.db = pool
        self.timeout = timeout

    async def _call(self, sql: str, *args: Any, retries: int = 0) -> Any:
        """fetchval with the ledger's timeout; unreachable PostgreSQL is `ledger_unavailable`."""
        for attempt in range(retries + 1):
            try:
                async with self.db.acquire(timeout=self.timeout) as conn:
                    try:
                        return await conn.fetchval(sql, *args, timeout=self.timeout)
                    except UNAVAILABLE:
                        conn.terminate()  # never hand a connection in an unknown state back to the pool
                        raise
            except UNAVAILABLE as exc:
                if attempt == retries:
                    raise ProxyError.ledger_unavailable() from exc
        raise AssertionError("unreachable")

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            async with self.db.acquire(timeout=self.timeout) as conn:
                try:
                    return list(await conn.fetch(sql, *args, timeout=self.timeout))
                except UNAVAILABLE:
                    conn.terminate()
                    raise
        except UNAVAILABLE as exc:
            raise ProxyError.ledger_unavailable() from exc

    async def grant(self, org_id: str, amount: int, reason: str, idempotency_key: str,
                    expires_at: datetime | None, actor: str) -> Row:
        """Idempotent by (org, idempotency_key); nets overage first. Returns the grant and the pool."""
        return await self._add_credit(org_id, "grant", amount, reason, idempotency_key, expires_at, actor)

    async def adjust(self, org_id: str, amount: int, reason: str, idempotency_key: str, actor: str) -> Row:
        """Signed correction (refunds positive); a negative one may not exceed available credit."""
        return await self._add_credit(org_id, "adjustment", amount, reason, idempotency_key, None, actor)

    async def _add_credit(self, org_id: str, kind: str, amount: int, reason: str, key: str,
                          expires_at: datetime | None, actor: str) -> Row:
        try:
            rows = await self._fetch("SELECT * FROM creditgate.add_credit($1, $2, $3, $4, $5, $6, $7)",
                                     org_id, kind, amount, reason, key, expires_at, actor)
        except asyncpg.PostgresError as exc:
            raise _credit_error(exc) from exc
        gid, replayed = rows[0]["grant_id"], rows[0]["replayed"]
        g = (await self._fetch("SELECT * FROM creditgate.grants WHERE id = $1", gid))[0]
        return {"id": f"grant_{gid}", "org_id": org_id, "kind": g["kind"], "amount_millicredits": g["amount"],
                "reason": g["reason"], "idempotency_key": g["idempotency_key"], "expires_at": g["expires_at"],
                "expired_at": g["expired_at"], "forfeited_millicredits": g["forfeited"], "actor": g["actor"],
                "created_at": g["created_at"], "replayed": replayed, "pool": await self.pool_balances(org_id)}

    async def pool_balances(self, org_id: str) -> Row:
        rows = await self._fetch(_POOL_SQL, org_id)
        if not rows:
            raise ProxyError.not_found("org_not_found", f"No organization '{org_id}'.")
        return pool_row(rows[0])

    async def pool(self, org_id: str) -> Row:
        """{"balance", "held", "available", "overage", "granted"} for the org's pool."""
        return await self.pool_balances(org_id)

    async def credits(self, org_id: str, user_id: str, key_id: str | None = None) -> Row:
        """The GET /v1/credits body (CONTRACT.md, Caller's own endpoints), with the calling key's own limit
        (`key`: its spend in this org this period; `available` the smallest of the three bounds)."""
        rows = await self._fetch(_CREDITS_SQL, org_id, user_id, key_id)
        if not rows:
            raise ProxyError.not_found("org_not_found", f"No organization '{org_id}'.")
        r = rows[0]
        pool = pool_row(r)
        allocation = allocation_row(r, pool["available"])
        body: Row = {"org_id": org_id,
                     "pool": {"balance": pool["balance"], "held": pool["held"], "available": pool["available"]},
                     "allocation": allocation, "key": None}
        if r["key_id"] is not None:
            used, held, lim = r["key_used"] or 0, r["key_held"] or 0, r["key_lim"]
            left = allocation["available"] if lim is None else min(allocation["available"], max(0, lim - used - held))
            body["key"] = {"id": r["key_id"], "limit": lim, "used": used, "held": held, "available": left,
                           "period": r["key_period"], "resets_at": r["key_resets_at"]}
        return body

    async def allocations(self, org_id: str, user_id: str | None = None) -> dict[str, Row]:
        """Each member's allocation this period by user id (one member's with `user_id`), in the shape and
        with the numbers of their own GET /v1/credits `allocation`: what the admin API shows operators."""
        rows = await self._fetch(_ALLOCATIONS_SQL, org_id, user_id)
        return {r["user_id"]: allocation_row(r, pool_row(r)["available"]) for r in rows}

    async def entries(self, org_id: str, *, user_id: str | None, limit: int, after: str | None
                      ) -> tuple[Sequence[Row], bool]:
        """Journal entries, newest first; `after` is the last row's "id" (anything else is 400
        invalid_value: `after=abc` used to be ignored and answer the first page again)."""
        cursor = parse_serial_cursor(after)
        rows = await self._fetch(_JOURNAL_SQL, org_id, user_id, cursor, limit + 1)
        out = [{"id": str(r["id"]), "kind": r["kind"], "amount_millicredits": r["amount"],
                "balance_delta": r["d_granted"] - r["d_posted"] - r["d_overage"], "held_delta": r["d_pending"],
                "granted_delta": r["d_granted"], "posted_delta": r["d_posted"], "overage_delta": r["d_overage"],
                "version": r["version"], "request_id": r["request_id"], "user_id": r["user_id"],
                "actor": r["actor"], "reason": r["reason"], "created_at": r["created_at"],
                "price_version": r["price_version"]} for r in rows[:limit]]
        return out, len(rows) > limit

    async def request(self, org_id: str, request_id: str) -> Row | None:
        """The GET /v1/requests/{id} body plus "user_id", or None. An expired hold with its automatic
        settlement shows as settled."""
        rows = await self._fetch(_REQUEST_SQL, org_id, request_id)
        if not rows:
            return None
        r = rows[0]
        settled = r["usage_source"] is not None
        status = "settled" if settled else ("pending" if r["state"] == "pending" else "voided")
        return {"request_id": r["request_id"], "status": status, "model": r["model"] or r["held_model"],
                "prompt_tokens": r["prompt_tokens"] if settled else r["held_prompt"],
                "completion_tokens": r["completion_tokens"] if settled else None,
                "held_millicredits": r["amount"], "charged_millicredits": r["charged"] if settled else None,
                "list_price_millicredits": r["list_price"] if settled else None,
                "usage_source": r["usage_source"], "byok": r["byok"], "user_id": r["user_id"],
                "price_version": r["price_version"]}

    async def hold_counts(self) -> tuple[int, int]:
        """(pending holds, pending holds past expiry plus the ledger's grace), over all orgs: the holds-open
        and holds-overdue gauges."""
        r = (await self._fetch(_HOLD_COUNTS_SQL))[0]
        return int(r["open"]), int(r["overdue"])

    async def low_credit(self) -> dict[str, tuple[int, int]]:
        """{"pool": (low, exhausted), "allocation": (low, exhausted)}: how many pools and allocations have
        under 10% of their credit left (exhausted included), and how many have none (the low-credit gauges;
        counts only, never which org)."""
        counts = {"pool": (0, 0), "allocation": (0, 0)}
        for r in await self._fetch(_LOW_CREDIT_SQL):
            counts[r["account"]] = (int(r["low"]), int(r["exhausted"]))
        return counts

    # ------------------------------------------------------------ price versions (proxy/config/live.py)

    async def record_price_version(self, version: str, prices: str) -> bool:
        """Store a price version's table once (True when this call stored it); the same version with
        another table is refused (a ValueError: never silently two tables for one name)."""
        try:
            return bool(await self._call("SELECT creditgate.record_price_version($1, $2)", version, prices,
                                         retries=1))
        except asyncpg.PostgresError as exc:
            if getattr(exc, "sqlstate", None) == "CG409":
                raise ValueError(f"price version {version} is already stored with another table") from None
            raise

    async def price_versions(self, *, limit: int, after: str | None) -> tuple[Sequence[Row], bool]:
        """The stored price versions, newest first (`after`: the last row's "id")."""
        rows = await self._fetch(
            "SELECT id, version, created_at FROM creditgate.price_versions WHERE ($1::bigint IS NULL OR id < $1)"
            " ORDER BY id DESC LIMIT $2", parse_serial_cursor(after), limit + 1)
        out = [{"id": str(r["id"]), "version": r["version"], "created_at": r["created_at"]} for r in rows[:limit]]
        return out, len(rows) > limit

    async def price_version(self, version: str) -> Row | None:
        """One version with its table (the canonical JSON text the version hashes), or None."""
        rows = await self._fetch("SELECT id, version, prices, created_at FROM creditgate.price_versions "
                                 "WHERE version = $1", version)
        if not rows:
            return None
        r = rows[0]
        return {"id": str(r["id"]), "version": r["version"], "created_at": r["created_at"], "prices": r["prices"]}


def _credit_error(exc: asyncpg.PostgresError) -> ProxyError:
    code, message = getattr(exc, "sqlstate", None), str(exc)
    if code == "CG404":
        return ProxyError.not_found("org_not_found", "No such organization.")
    if code == "CG409":
        return ProxyError(409, "conflict_error", "idempotency_key_reused",
                          "This idempotency_key was already used with different fields.")
    if code in ("CG400", "CG402"):
        return ProxyError.invalid_value("amount_millicredits" if "amount" in message or code == "CG402"
                                        else "expires_at", message[:1].upper() + message[1:] + ".")
    return ProxyError.ledger_unavailable() if isinstance(exc, UNAVAILABLE) else ProxyError(
        500, "api_error", None, "The ledger refused the operation.")
