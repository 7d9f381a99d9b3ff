"""In-memory fakes of the hot-path protocols (proxy/gateway/context.py) and helpers for the policy unit tests.

The ledger's fake is the shared one, tests/fakes.py's `FakeLedger`."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from policies.credits import ReserveCredits
from policies.model import RewriteModel
from proxy.config.catalogue import Catalogue
from proxy.config.policy import PolicyConfig
from proxy.directory.apikeys import hash_key
from proxy.directory.types import ApiKey, Membership, StoredProviderKey
from proxy.gateway.context import RequestContext, Usage
from proxy.gateway.tokens import TokenCounter
from proxy.ledger.types import Settlement
from tests.fakes import FakeLedger

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


KEY = "sk-cg-" + "k" * 43


def with_key(directory: FakeDirectory, *, bound: str | None = None, revoked: bool = False) -> None:
    directory.keys[hash_key(KEY)] = ApiKey("key_1", "usr_1", bound, revoked)


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


# (input, output) USD per token, as written in litellm_config.yaml
PRICES = {
    "fake-small": ("0.00000005", "0.0000001"),
    "fake-medium": ("0.0000006", "0.0000012"),
    "fake-large": ("0.0000025", "0.00001"),
    "fake-gpt-4o-mini": ("0.00000015", "0.0000006"),
    "mock-gpt": ("0.0000005", "0.0000015"),
    "fake-multi-a": ("0.000001", "0.000002"),
    "fake-multi-b": ("0.000002", "0.000004"),
}
MARKUP = {"free": "0.0", "starter": "0.4", "professional": "0.6", "enterprise": "0.8"}
MULTIPLIER = {"eco": "0.1", "balanced": "0.25", "precision": "1.0"}
MESSAGES = [{"role": "user", "content": "Count to three, please."}]


def expected(prices: tuple[str, str], prompt: int, completion: int, tier: str, level: str | None) -> int:
    usd = prompt * Fraction(prices[0]) + completion * Fraction(prices[1])
    factor = (1 + Fraction(MARKUP[tier])) * (Fraction(MULTIPLIER[level]) if level else 1)
    return math.ceil(usd * 1000 * 1000 * factor)


def prompt_bound(counted: int) -> int:
    return math.ceil(Fraction(counted) * Fraction(3, 2)) + 64


Records = list[tuple[str, Settlement | None]]


def credits_for(ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter,
                records: Records | None = None, **kw: Any) -> ReserveCredits:
    def record(outcome: str, settlement: Settlement | None) -> None:
        if records is not None:
            records.append((outcome, settlement))

    return ReserveCredits(ledger, policy, catalogue, counter, record=record, retry_seconds=2.0, **kw)


async def admitted(policy: PolicyConfig, catalogue: Catalogue, body: dict[str, Any], *, tier: str = "starter",
                   level: str = "balanced", route: str = "chat/completions", byok: bool = False) -> RequestContext:
    ctx = make_ctx(body, route=route, x_power_level=level)
    ctx.stream = body.get("stream") is True
    ctx.key = ApiKey("key_1", "usr_1", None, False)
    ctx.membership = member("org_a", tier=tier)
    await RewriteModel(policy, catalogue)(ctx)
    ctx.byok = byok
    return ctx


Serve = Callable[[RequestContext], Awaitable[None]]


async def run(credits: ReserveCredits, ctx: RequestContext, serve: Serve) -> None:
    """What the passthrough does: the chain's last policy, then forwarding, inside ctx.cleanup."""
    async with ctx.cleanup:
        await credits(ctx)
        await serve(ctx)


def answered(usage: Usage | None, deployment: str | None = None) -> Serve:
    async def serve(ctx: RequestContext) -> None:
        ctx.upstream_status, ctx.deployment_id, ctx.usage = 200, deployment, usage
        if not ctx.stream:  # the passthrough settles a whole answer before sending it
            await ctx.cleanup.aclose()
        ctx.response_started = True

    return serve


