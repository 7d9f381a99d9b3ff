"""In-memory fakes of the store protocols, for tests that want the routes or the chain without PostgreSQL.

`FakeLedger` is both sides of the ledger: the hot path's `Ledger` (proxy/ledger/types.py: reserve,
settle, void, checkpoint) and the APIs' `LedgerAdmin` (proxy/api/stores.py). The two sides do not
touch each other: the hot path is records and knobs (tests/policies), the admin side a small journal
with canned reads (tests/admin, tests/caller). The real `PgLedger` is tested in tests/ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from proxy.db.pool import Row
from proxy.directory.types import ApiKey
from proxy.errors import ProxyError
from proxy.ledger.types import Hold, HoldRequest, Settlement, SettleResult

# What `usage` answers: one row per entry, its "group" key renamed to the asked group_by.
USAGE_ROWS: list[Row] = [{"group": "fake-small", "requests": 2, "prompt_tokens": 30, "completion_tokens": 12,
                          "charged_millicredits": 7, "list_price_millicredits": 5}]
# What `credits` answers, after "org_id".
CREDITS_ROW: Row = {"pool": {"balance": 1000, "held": 10, "available": 990},
                    "allocation": {"limit": None, "used": 5, "held": 10, "available": None, "period": "none",
                                   "resets_at": None}}
PROVIDER_USAGE_ROW: Row = {"requests": 3, "prompt_tokens": 40, "completion_tokens": 9, "list_price_millicredits": 123}


def _copy(row: Row) -> Row:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in row.items()}


@dataclass
class FakeLedger:
    """Both ledger protocols in memory.

    Hot path: `reserve` records its request in `holds` (or raises `reserve_error`); `settle`, `void` and
    `checkpoint` record into `settled`, `voided`, `checkpoints`; `unavailable` makes the next N settle or
    void calls raise 503 ledger_unavailable, `settle_delay` delays settle, `remaining` is what settle
    reports left.

    Admin side: every LedgerAdmin call is recorded in `calls` as (method, arguments). `grant` and `adjust`
    post to the journal `entries_rows`, idempotent by (org, idempotency_key) (the same key with other
    fields is 409), and move `balance` (and `granted`); `pool` is that state. `entries` lists the
    journal newest (highest id) first, the org's rows (a row without "org_id" is in every org) or one
    user's, paged by id. `credits`, `usage`, `provider_usage` and `request` answer the canned
    `credits_row`, `usage_rows`, `provider_usage_row` and `requests`; `usage_records` pages `record_rows`.
    """

    # hot path: knobs
    unavailable: int = 0
    remaining: int | None = 123_456
    reserve_error: ProxyError | None = None
    settle_delay: float = 0.0
    # hot path: records
    holds: list[HoldRequest] = field(default_factory=list)
    settled: list[tuple[str, str, Settlement]] = field(default_factory=list)
    voided: list[tuple[str, str]] = field(default_factory=list)
    checkpoints: list[tuple[str, str, int]] = field(default_factory=list)
    # admin side: state
    entries_rows: list[Row] = field(default_factory=list)
    balance: dict[str, int] = field(default_factory=dict)
    granted: dict[str, int] = field(default_factory=dict)
    # admin side: canned answers
    usage_rows: list[Row] = field(default_factory=lambda: [_copy(r) for r in USAGE_ROWS])
    credits_row: Row = field(default_factory=lambda: _copy(CREDITS_ROW))
    provider_usage_row: Row = field(default_factory=lambda: _copy(PROVIDER_USAGE_ROW))
    requests: dict[tuple[str, str], Row] = field(default_factory=dict)
    record_rows: list[Row] = field(default_factory=list)  # what `usage_records` pages through
    # admin side: what it was asked
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def last(self) -> tuple[str, tuple[Any, ...]]:
        """The most recent call (a method, so type checkers do not narrow it between calls)."""
        return self.calls[-1]

    # the hot path (proxy.ledger.types.Ledger)

    async def reserve(self, request: HoldRequest) -> Hold:
        if self.reserve_error is not None:
            raise self.reserve_error
        self.holds.append(request)
        return Hold(request.org_id, request.request_id, request.amount)

    def _maybe_fail(self) -> None:
        if self.unavailable > 0:
            self.unavailable -= 1
            raise ProxyError.ledger_unavailable()

    async def settle(self, org_id: str, request_id: str, settlement: Settlement) -> SettleResult:
        if self.settle_delay:
            await asyncio.sleep(self.settle_delay)
        self._maybe_fail()
        self.settled.append((org_id, request_id, settlement))
        return SettleResult("posted", settlement.charge, self.remaining)

    async def void(self, org_id: str, request_id: str) -> str:
        self._maybe_fail()
        self.voided.append((org_id, request_id))
        return "voided"

    async def checkpoint(self, org_id: str, request_id: str, completion_tokens: int) -> None:
        self.checkpoints.append((org_id, request_id, completion_tokens))

    # the APIs' side (proxy.api.stores.LedgerAdmin)

    def _posted(self, org_id: str, kind: str, amount: int, reason: str, key: str) -> Row | None:
        """The entry already posted under (org, key), or None; 409 if it was posted with other fields."""
        previous = next((e for e in self.entries_rows
                         if e.get("org_id") == org_id and e.get("idempotency_key") == key), None)
        if previous is not None and (previous["kind"], previous["amount_millicredits"], previous["reason"]) != (
            kind, amount, reason
        ):
            raise ProxyError(409, "conflict_error", "idempotency_key_reused", "Key reused with other fields.")
        return previous

    def _post(self, org_id: str, kind: str, amount: int, reason: str, key: str, actor: str, **extra: Any) -> Row:
        next_id = max((int(e["id"]) for e in self.entries_rows), default=0) + 1
        entry = {"id": str(next_id), "kind": kind, "org_id": org_id, "amount_millicredits": amount,
                 "reason": reason, "idempotency_key": key, "actor": actor, **extra}
        self.entries_rows.append(entry)
        self.balance[org_id] = self.balance.get(org_id, 0) + amount
        return entry

    def _pool(self, org_id: str) -> Row:
        balance = self.balance.get(org_id, 0)
        return {"balance": balance, "held": 0, "available": balance, "overage": 0,
                "granted": self.granted.get(org_id, 0)}

    async def grant(
        self, org_id: str, amount: int, reason: str, idempotency_key: str, expires_at: datetime | None, actor: str
    ) -> Row:
        self.calls.append(("grant", (org_id, amount, reason, idempotency_key, expires_at, actor)))
        entry = self._posted(org_id, "grant", amount, reason, idempotency_key)
        if entry is None:
            entry = self._post(org_id, "grant", amount, reason, idempotency_key, actor, expires_at=expires_at)
            self.granted[org_id] = self.granted.get(org_id, 0) + amount
        return {"grant": entry, "pool": self._pool(org_id)}

    async def adjust(self, org_id: str, amount: int, reason: str, idempotency_key: str, actor: str) -> Row:
        self.calls.append(("adjust", (org_id, amount, reason, idempotency_key, actor)))
        entry = self._posted(org_id, "adjustment", amount, reason, idempotency_key)
        if entry is None:
            if self.balance.get(org_id, 0) + amount < 0:
                raise ProxyError(409, "conflict_error", "adjustment_exceeds_available", "Not that much available.")
            entry = self._post(org_id, "adjustment", amount, reason, idempotency_key, actor)
        return {"adjustment": entry, "pool": self._pool(org_id)}

    async def pool(self, org_id: str) -> Row:
        self.calls.append(("pool", (org_id,)))
        return self._pool(org_id)

    async def credits(self, org_id: str, user_id: str, key_id: str | None = None) -> Row:
        self.calls.append(("credits", (org_id, user_id)))
        return {"org_id": org_id, **_copy(self.credits_row)}

    async def allocations(self, org_id: str, user_id: str | None = None) -> dict[str, Row]:
        """Nobody's: the admin routes then read each member's as /v1/credits does (`credits_row`)."""
        self.calls.append(("allocations", (org_id, user_id)))
        return {}

    async def entries(
        self, org_id: str, *, user_id: str | None, limit: int, after: str | None
    ) -> tuple[Sequence[Row], bool]:
        self.calls.append(("entries", (org_id, user_id, limit, after)))
        rows = [e for e in sorted(self.entries_rows, key=lambda e: int(e["id"]), reverse=True)
                if e.get("org_id", org_id) == org_id
                and (user_id is None or e.get("user_id") == user_id)
                and (after is None or int(e["id"]) < int(after))]
        return rows[:limit], len(rows) > limit

    async def usage(
        self, org_id: str, *, group_by: str, user_id: str | None, start: datetime | None, end: datetime | None,
        end_user: str | None = None, tag: str | None = None, limit: int | None = None,
    ) -> Sequence[Row]:
        self.calls.append(("usage", (org_id, group_by, user_id, start, end, end_user, tag, limit)))
        rows = [{group_by: row["group"], **{k: v for k, v in row.items() if k != "group"}} for row in self.usage_rows]
        return rows if limit is None else rows[:limit + 1]

    async def usage_records(
        self, org_id: str, *, user_id: str | None, start: datetime, end: datetime, end_user: str | None,
        tag: str | None, after: tuple[datetime, str] | None, limit: int,
    ) -> Sequence[Row]:
        """`record_rows` (each with "recorded_at" and "request_id"), of the org when they name one, in
        keyset order after `after`: the filters are recorded in `calls`, not applied."""
        self.calls.append(("usage_records", (org_id, user_id, start, end, end_user, tag, after, limit)))
        rows = sorted((r for r in self.record_rows if r.get("org_id", org_id) == org_id),
                      key=lambda r: (r["recorded_at"], r["request_id"]))
        if after is not None:
            rows = [r for r in rows if (r["recorded_at"], r["request_id"]) > after]
        return [{k: v for k, v in r.items() if k != "org_id"} for r in rows[:limit]]

    async def request(self, org_id: str, request_id: str) -> Row | None:
        self.calls.append(("request", (org_id, request_id)))
        return self.requests.get((org_id, request_id))

    async def provider_usage(self, org_id: str, user_id: str | None, provider: str) -> Row:
        self.calls.append(("provider_usage", (org_id, user_id, provider)))
        return _copy(self.provider_usage_row)

    async def price_versions(self, *, limit: int, after: str | None) -> tuple[Sequence[Row], bool]:
        self.calls.append(("price_versions", (limit, after)))
        return [], False

    async def price_version(self, version: str) -> Row | None:
        self.calls.append(("price_version", (version,)))
        return None


class KeyReader(Protocol):
    async def api_key(self, key_hash: str) -> ApiKey | None: ...


@dataclass
class DirectoryKeys:
    """Authenticate's key lookup straight from a directory, fake or PostgreSQL (the app puts its KeyCache
    there, which has its own tests)."""

    directory: KeyReader

    async def get(self, key_hash: str) -> ApiKey | None:
        return await self.directory.api_key(key_hash)
