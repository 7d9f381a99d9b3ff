"""In-memory fakes of the hot-path protocols (proxy/context.py) for unit tests of single policies."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy.context import (
    ApiKey,
    Hold,
    HoldRequest,
    Membership,
    RequestContext,
    Settlement,
    SettleResult,
    StoredProviderKey,
)
from proxy.errors import ProxyError

ROOT = Path(__file__).resolve().parents[2]


class FakeDirectory:
    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}
        self.members: dict[str, list[Membership]] = {}
        self.provider: list[tuple[str, str, StoredProviderKey]] = []  # (org_id, owner user or "", key)
        self.key_lookups = 0
        self.fail: Exception | None = None

    async def api_key(self, key_hash: str) -> ApiKey | None:
        self.key_lookups += 1
        if self.fail is not None:
            raise self.fail
        return self.keys.get(key_hash)

    async def memberships(self, user_id: str) -> Sequence[Membership]:
        if self.fail is not None:
            raise self.fail
        return list(self.members.get(user_id, []))

    async def provider_keys(self, org_id: str, user_id: str, provider: str) -> Sequence[StoredProviderKey]:
        if self.fail is not None:
            raise self.fail
        return [
            k
            for org, owner, k in self.provider
            if org == org_id and k.provider == provider and (k.scope == "org" or owner == user_id)
        ]


class FakeLedger:
    """Records every call; `unavailable` makes the next N settle/void calls raise 503."""

    def __init__(self) -> None:
        self.holds: list[HoldRequest] = []
        self.settled: list[tuple[str, str, Settlement]] = []
        self.voided: list[tuple[str, str]] = []
        self.checkpoints: list[tuple[str, str, int]] = []
        self.unavailable = 0
        self.remaining: int | None = 123_456
        self.reserve_error: ProxyError | None = None
        self.reserve_delay = 0.0
        self.settle_delay = 0.0

    async def reserve(self, request: HoldRequest) -> Hold:
        if self.reserve_delay:
            await asyncio.sleep(self.reserve_delay)
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

    async def void(self, org_id: str, request_id: str) -> None:
        self._maybe_fail()
        self.voided.append((org_id, request_id))

    async def checkpoint(self, org_id: str, request_id: str, completion_tokens: int) -> None:
        self.checkpoints.append((org_id, request_id, completion_tokens))


def member(org_id: str = "org_a", *, user_id: str = "usr_1", tier: str = "starter", **kw: Any) -> Membership:
    fields: dict[str, Any] = dict(
        org_id=org_id,
        user_id=user_id,
        role="member",
        is_default=False,
        power_level=None,
        member_suspended=False,
        org_tier=tier,
        org_suspended=False,
    )
    fields.update(kw)
    return Membership(**fields)


def make_ctx(body: dict[str, Any] | None = None, *, route: str = "chat/completions", **headers: str) -> RequestContext:
    return RequestContext(
        request_id="req_test",
        route=route,
        headers={k.replace("_", "-").lower(): v for k, v in headers.items()},
        body=dict(body or {}),
    )


