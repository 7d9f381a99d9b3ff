"""Stand-ins for what other parts supply: `identify` (the app runs Authenticate + ResolveOrg), a
canned LedgerAdmin (the routes only pass its rows through) and the LiteLLM probe."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.requests import Request

from proxy.config.settings import Secret
from proxy.directory.types import Membership
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext

Row = dict[str, Any]


def member(org: str, user: str, role: str = "member", tier: str = "starter") -> Membership:
    return Membership(org_id=org, user_id=user, role=role, is_default=True, power_level=None,
                      member_suspended=False, org_tier=tier, org_suspended=False)


@dataclass
class FakeIdentify:
    """Bearer token -> membership; anything else is the contract's 401."""

    tokens: dict[str, Membership]
    calls: int = 0

    async def __call__(self, request: Request) -> RequestContext:
        self.calls += 1
        auth = request.headers.get("authorization", "")
        found = self.tokens.get(auth.removeprefix("Bearer "))
        if found is None:
            raise ProxyError.invalid_api_key()
        return RequestContext(request_id="req_test", route="caller", headers={}, body={}, membership=found)


@dataclass
class FakeLedger:
    """Answers canned rows and records the arguments it was asked with."""

    requests: dict[tuple[str, str], Row] = field(default_factory=dict)
    entries_rows: list[Row] = field(default_factory=list)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    async def grant(self, org_id: str, amount: int, reason: str, idempotency_key: str, expires_at: datetime | None,
                    actor: str) -> Row:
        raise AssertionError("caller routes never grant")

    async def adjust(self, org_id: str, amount: int, reason: str, idempotency_key: str, actor: str) -> Row:
        raise AssertionError("caller routes never adjust")

    async def pool(self, org_id: str) -> Row:
        raise AssertionError("caller routes read credits(), not pool()")

    async def credits(self, org_id: str, user_id: str) -> Row:
        self.calls.append(("credits", (org_id, user_id)))
        return {"org_id": org_id, "pool": {"balance": 1000, "held": 10, "available": 990},
                "allocation": {"limit": None, "used": 5, "held": 10, "available": None, "period": "none",
                               "resets_at": None}}

    async def entries(self, org_id: str, *, user_id: str | None, limit: int, after: str | None) -> tuple[
        Sequence[Row], bool
    ]:
        self.calls.append(("entries", (org_id, user_id, limit, after)))
        rows = [r for r in self.entries_rows if r["user_id"] == user_id]
        start = 0 if after is None else next(i + 1 for i, r in enumerate(rows) if r["id"] == after)
        return rows[start:start + limit], len(rows) > start + limit

    async def usage(self, org_id: str, *, group_by: str, user_id: str | None, start: datetime | None,
                    end: datetime | None) -> Sequence[Row]:
        self.calls.append(("usage", (org_id, group_by, user_id, start, end)))
        return [{group_by: "fake-small", "requests": 2, "prompt_tokens": 30, "completion_tokens": 12,
                 "charged_millicredits": 7, "list_price_millicredits": 5}]

    async def request(self, org_id: str, request_id: str) -> Row | None:
        self.calls.append(("request", (org_id, request_id)))
        return self.requests.get((org_id, request_id))

    async def provider_usage(self, org_id: str, user_id: str | None, provider: str) -> Row:
        self.calls.append(("provider_usage", (org_id, user_id, provider)))
        return {"requests": 3, "prompt_tokens": 40, "completion_tokens": 9, "list_price_millicredits": 123}


@dataclass
class FakeProbe:
    answer: tuple[int, str] = (200, "The provider accepted the key.")
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def __call__(self, model: str, key: Secret) -> tuple[int, str]:
        self.calls.append((model, key.reveal()))
        return self.answer
