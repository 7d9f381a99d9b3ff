"""In-memory stand-ins for the caller routes' dependencies (identify, LedgerAdmin, the directory's
BYOK side), used where a test is about the routes themselves; the real-store tests are in
test_real_stores.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from proxy.context import Membership, RequestContext, StoredProviderKey
from proxy.errors import ProxyError
from proxy.models_api import DeploymentEntry, ModelEntry

Row = dict[str, Any]
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _model(name: str, provider: str, byok: str = "none", priced: bool = True) -> ModelEntry:
    return ModelEntry(name, (DeploymentEntry(provider, byok),), priced)


# the shipped litellm_config.yaml's shape, plus a second provider
MODELS = (
    _model("mock-gpt", "openai"),
    _model("fake-small", "openai"),
    _model("fake-large", "openai"),
    ModelEntry("fake-multi", (DeploymentEntry("openai", "none"), DeploymentEntry("openai", "none")), True),
    _model("byok-gpt", "openai", "optional"),
    _model("byok-only", "openai", "required"),
    _model("unpriced-model", "openai", "optional", priced=False),
    _model("claude-byok", "anthropic", "optional"),
)
FREE = {"fake-small", "mock-gpt", "byok-gpt", "unpriced-model"}


def tier_allows(tier: str, model: str) -> bool:
    return tier != "free" or model in FREE


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
class FakeKeys:
    """The BYOK half of the directory: (org, scope, owner, provider) -> row with the ciphertext."""

    rows: dict[tuple[str, str, str, str], Row] = field(default_factory=dict)

    async def put_provider_key(self, org_id: str, scope: str, owner_id: str, provider: str, ciphertext: bytes,
                               last4: str) -> Row:
        old = self.rows.get((org_id, scope, owner_id, provider))
        row = {"org_id": org_id, "scope": scope, "owner_id": owner_id, "provider": provider,
               "ciphertext": ciphertext, "last4": last4, "enabled": True,
               "created_at": old["created_at"] if old else T0, "updated_at": T0}
        self.rows[(org_id, scope, owner_id, provider)] = row
        return row

    async def list_provider_keys(self, org_id: str, user_id: str) -> Sequence[Row]:
        return [r for (o, s, w, _), r in self.rows.items()
                if o == org_id and ((s == "user" and w == user_id) or s == "org")]

    async def delete_provider_key(self, org_id: str, scope: str, owner_id: str, provider: str) -> bool:
        return self.rows.pop((org_id, scope, owner_id, provider), None) is not None

    async def toggle_provider_key(self, org_id: str, scope: str, owner_id: str, provider: str,
                                  enabled: bool) -> Row | None:
        row = self.rows.get((org_id, scope, owner_id, provider))
        if row is not None:
            row["enabled"] = enabled
        return row

    async def provider_keys(self, org_id: str, user_id: str, provider: str) -> Sequence[StoredProviderKey]:
        return [StoredProviderKey(r["provider"], r["scope"], r["ciphertext"], r["enabled"])
                for r in await self.list_provider_keys(org_id, user_id) if r["provider"] == provider]


@dataclass
class FakeProbe:
    answer: tuple[int, str] = (200, "The provider accepted the key.")
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def __call__(self, model: str, key: str) -> tuple[int, str]:
        self.calls.append((model, key))
        return self.answer
