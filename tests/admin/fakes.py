"""An in-memory LedgerAdmin for the admin routes' tests (the real PgLedger is tested in its own area
and, once present, through tests/admin/test_real_ledger.py). It records every call it gets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from proxy.db.pool import Row
from proxy.errors import ProxyError


@dataclass
class FakeLedger:
    granted: dict[str, int] = field(default_factory=dict)
    balance: dict[str, int] = field(default_factory=dict)
    journal: list[Row] = field(default_factory=list)
    by_key: dict[tuple[str, str], Row] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def last(self) -> tuple[str, Any]:
        """The most recent call (a method, so type checkers do not narrow it between calls)."""
        return self.calls[-1]

    def _post(self, org_id: str, kind: str, amount: int, reason: str, key: str, actor: str, **extra: Any) -> Row:
        previous = self.by_key.get((org_id, key))
        if previous is not None:
            if (previous["kind"], previous["amount_millicredits"], previous["reason"]) != (kind, amount, reason):
                raise ProxyError(409, "conflict_error", "idempotency_key_reused", "Key reused with other fields.")
            return previous
        entry = {"id": str(len(self.journal) + 1), "kind": kind, "org_id": org_id, "amount_millicredits": amount,
                 "reason": reason, "idempotency_key": key, "actor": actor, **extra}
        self.journal.append(entry)
        self.by_key[(org_id, key)] = entry
        self.balance[org_id] = self.balance.get(org_id, 0) + amount
        return entry

    async def grant(
        self, org_id: str, amount: int, reason: str, idempotency_key: str, expires_at: datetime | None, actor: str
    ) -> Row:
        self.calls.append(("grant", (org_id, amount, reason, idempotency_key, expires_at, actor)))
        self.granted[org_id] = self.granted.get(org_id, 0) + amount
        entry = self._post(org_id, "grant", amount, reason, idempotency_key, actor, expires_at=expires_at)
        return {"grant": entry, "pool": await self.pool(org_id)}

    async def adjust(self, org_id: str, amount: int, reason: str, idempotency_key: str, actor: str) -> Row:
        self.calls.append(("adjust", (org_id, amount, reason, idempotency_key, actor)))
        if self.balance.get(org_id, 0) + amount < 0:
            raise ProxyError(409, "conflict_error", "adjustment_exceeds_available", "Not that much available.")
        entry = self._post(org_id, "adjustment", amount, reason, idempotency_key, actor)
        return {"adjustment": entry, "pool": await self.pool(org_id)}

    async def pool(self, org_id: str) -> Row:
        balance = self.balance.get(org_id, 0)
        return {"balance": balance, "held": 0, "available": balance, "overage": 0,
                "granted": self.granted.get(org_id, 0)}

    async def entries(
        self, org_id: str, *, user_id: str | None, limit: int, after: str | None
    ) -> tuple[Sequence[Row], bool]:
        self.calls.append(("entries", (org_id, user_id, limit, after)))
        rows = [e for e in reversed(self.journal)
                if e["org_id"] == org_id and (after is None or int(e["id"]) < int(after))]
        return rows[:limit], len(rows) > limit

    async def usage(
        self, org_id: str, *, group_by: str, user_id: str | None, start: datetime | None, end: datetime | None
    ) -> Sequence[Row]:
        self.calls.append(("usage", (org_id, group_by, user_id, start, end)))
        return [{group_by: "x", "requests": 2, "prompt_tokens": 10, "completion_tokens": 5,
                 "charged_millicredits": 42, "list_price_millicredits": 70}]

    async def credits(self, org_id: str, user_id: str) -> Row:
        raise NotImplementedError

    async def request(self, org_id: str, request_id: str) -> Row | None:
        raise NotImplementedError

    async def provider_usage(self, org_id: str, user_id: str | None, provider: str) -> Row:
        raise NotImplementedError
