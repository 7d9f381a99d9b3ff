"""RateLimit through a real Redis: exact limits per member, window reset, Retry-After, token limits
counted after the answer, tiers without limits; and with Redis down or silent, requests pass and are
counted. Also the policy file's rpm/tpm validation and the chain's order with a Redis client."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from devstack import services
from policies import (
    Authenticate,
    InjectProviderKey,
    RateLimit,
    ReserveCredits,
    ResolveOrg,
    RewriteModel,
    default_policies,
)
from policies.ratelimit import redis_client
from proxy.config.catalogue import Catalogue
from proxy.config.policy import PolicyConfig, parse_policy
from proxy.config.settings import ConfigError
from proxy.directory.crypto import KeyBox
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext, Usage
from proxy.gateway.tokens import TokenCounter
from proxy.ops.metrics import Metrics
from tests.fakes import FakeLedger
from tests.policies.policy_support import FakeDirectory, member

POLICY = """
credits_per_usd: 1000
default_power_level: eco
power_levels:
  eco: {multiplier: 0.1, max_tokens: 10, models: [fake-small]}
tiers:
  limited: {markup: 0, rpm: 3, models: ["*"]}
  tokens:  {markup: 0, tpm: 100, models: ["*"]}
  both:    {markup: 0, rpm: 5, tpm: 50, models: ["*"]}
  open:    {markup: 0, models: ["*"]}
"""


class Unenforced(list[str]):
    def __call__(self, reason: str) -> None:
        self.append(reason)


@pytest.fixture
async def limiter(redis_server: services.Service) -> AsyncIterator[tuple[RateLimit, Unenforced]]:
    client = redis_client(redis_server.url)
    seen = Unenforced()
    prefix = f"test:ratelimit:{time.monotonic_ns()}"  # the session's Redis is shared
    try:
        yield RateLimit(parse_policy(POLICY), client, unenforced=seen, prefix=prefix), seen
    finally:
        await client.aclose()


def ctx_of(tier: str, org: str = "org_a", user: str = "usr_1") -> RequestContext:
    ctx = RequestContext(request_id="r", route="chat/completions", headers={}, body={})
    ctx.membership = member(org, user_id=user, tier=tier)
    return ctx


async def admit(limit: RateLimit, tier: str, org: str = "org_a", user: str = "usr_1") -> ProxyError | None:
    """None when admitted, the refusal otherwise (the request's cleanup runs at once, unanswered)."""
    ctx = ctx_of(tier, org, user)
    async with ctx.cleanup:
        try:
            await limit(ctx)
        except ProxyError as err:
            return err
    return None


async def test_exactly_rpm_requests_then_429_with_honest_retry_after(
    limiter: tuple[RateLimit, Unenforced],
) -> None:
    limit, seen = limiter
    started = time.monotonic()
    assert [await admit(limit, "limited") for _ in range(3)] == [None, None, None]
    refused = await admit(limit, "limited")
    elapsed = time.monotonic() - started
    assert refused is not None
    assert (refused.status, refused.body()) == (429, {"error": {
        "message": "Rate limit exceeded.", "type": "rate_limit_error", "param": None, "code": "rate_limited"}})
    # the window opened at the first request and lasts 60 s: what is left, rounded up
    assert math.ceil(60 - elapsed) <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers == {"retry-after": refused.headers["retry-after"]}
    assert seen == []


async def test_the_window_resets_and_refusals_do_not_extend_it(redis_server: services.Service) -> None:
    client = redis_client(redis_server.url)
    limit = RateLimit(parse_policy(POLICY), client, window_seconds=0.6, prefix=f"test:rl:{time.monotonic_ns()}")
    try:
        started = time.monotonic()
        assert [await admit(limit, "limited") for _ in range(3)] == [None, None, None]
        refusals = [await admit(limit, "limited") for _ in range(5)]
        assert [(r.status, r.headers["retry-after"]) for r in refusals if r is not None] == [(429, "1")] * 5
        await asyncio.sleep(max(0.0, 0.7 - (time.monotonic() - started)))  # the first window is over
        assert [await admit(limit, "limited") for _ in range(3)] == [None, None, None]
        assert (await admit(limit, "limited")) is not None
    finally:
        await client.aclose()


async def test_limits_are_per_member(limiter: tuple[RateLimit, Unenforced]) -> None:
    limit, _ = limiter
    for _ in range(3):
        assert await admit(limit, "limited", "org_a", "usr_1") is None
    assert await admit(limit, "limited", "org_a", "usr_1") is not None
    assert [await admit(limit, "limited", "org_a", "usr_2") for _ in range(3)] == [None] * 3  # same org
    assert [await admit(limit, "limited", "org_b", "usr_1") for _ in range(3)] == [None] * 3  # same user
    assert await admit(limit, "limited", "org_a", "usr_1") is not None


async def test_a_tier_without_limits_never_touches_redis(
    limiter: tuple[RateLimit, Unenforced], redis_server: services.Service
) -> None:
    limit, seen = limiter
    assert [await admit(limit, "open") for _ in range(50)] == [None] * 50
    assert [await admit(limit, "no-such-tier") for _ in range(5)] == [None] * 5
    client = redis_client(redis_server.url)
    try:
        assert [k async for k in client.scan_iter(match=f"{limit._prefix}:*")] == []
    finally:
        await client.aclose()
    assert seen == []


async def answered(limit: RateLimit, tier: str, usage: Usage | None, *, status: int | None = 200,
                   streamed: int = 0) -> ProxyError | None:
    """One request through the policy that LiteLLM answered with `usage` (or, without usage, a stream
    that carried `streamed` content chunks)."""
    ctx = ctx_of(tier)
    async with ctx.cleanup:
        try:
            await limit(ctx)
        except ProxyError as err:
            return err
        ctx.upstream_status, ctx.usage, ctx.prompt_tokens = status, usage, 7
        for _ in range(streamed):
            ctx.meter.feed("")
    return None


async def test_tokens_count_after_each_answer_and_refuse_once_tpm_is_reached(
    limiter: tuple[RateLimit, Unenforced], redis_server: services.Service
) -> None:
    limit, _ = limiter
    client = redis_client(redis_server.url)
    key = f"{limit._prefix}:{{org_a:usr_1}}:tokens"
    try:
        assert await answered(limit, "tokens", Usage(40, 30)) is None
        assert await client.get(key) == b"70"
        assert await answered(limit, "tokens", None, status=None) is None  # never answered: no tokens
        assert await answered(limit, "tokens", None, status=502) is None  # upstream error: no tokens
        assert await client.get(key) == b"70"
        assert await answered(limit, "tokens", None, streamed=5) is None  # broken stream: prompt + streamed
        assert await client.get(key) == b"82"
        assert await answered(limit, "tokens", Usage(10, 8)) is None  # 82 < 100: admitted, then 100
        refused = await answered(limit, "tokens", Usage(1, 1))
        assert refused is not None and refused.code == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert await client.get(key) == b"100"
        assert await client.exists(f"{limit._prefix}:{{org_a:usr_1}}:requests") == 0  # no rpm: not counted
    finally:
        await client.aclose()


async def test_rpm_and_tpm_together(limiter: tuple[RateLimit, Unenforced]) -> None:
    limit, _ = limiter
    assert await answered(limit, "both", Usage(30, 30)) is None  # 60 tokens >= tpm 50
    refused = await answered(limit, "both", Usage(1, 1))
    assert refused is not None and refused.status == 429


async def test_redis_down_lets_requests_through_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = redis_client(f"redis://127.0.0.1:{services.free_port()}/0")  # nothing listens there
    seen = Unenforced()
    limit = RateLimit(parse_policy(POLICY), client, unenforced=seen)
    try:
        with caplog.at_level(logging.WARNING, logger="creditgate.ratelimit"):
            started = time.monotonic()
            assert [await admit(limit, "limited") for _ in range(6)] == [None] * 6
            assert await answered(limit, "both", Usage(40, 40)) is None  # admitted, tokens not counted
            elapsed = time.monotonic() - started
    finally:
        await client.aclose()
    assert seen == ["unavailable"] * 7  # each admission once (an unchecked request's tokens are not counted)
    assert [r.getMessage() for r in caplog.records] == [
        "rate limits not enforced: Redis unavailable (ConnectionError); 1 request(s) let through unchecked "
        "since the last warning"]
    assert elapsed < 5.0  # refused connections fail at once (wide margin for a loaded machine)


async def test_limits_come_back_with_a_restarted_redis(caplog: pytest.LogCaptureFixture) -> None:
    """A new Redis knows neither the counters nor the script (EVALSHA's NOSCRIPT is reloaded)."""
    redis = services.start_redis()
    client = redis_client(redis.url)
    seen = Unenforced()
    limit = RateLimit(parse_policy(POLICY), client, unenforced=seen)
    try:
        assert [await admit(limit, "limited") for _ in range(2)] == [None, None]
        redis.stop()
        with caplog.at_level(logging.WARNING, logger="creditgate.ratelimit"):
            assert [await admit(limit, "limited") for _ in range(3)] == [None] * 3
            assert seen == ["unavailable"] * 3
            redis = services.start_redis(port=redis.port)
            assert [await admit(limit, "limited") for _ in range(3)] == [None] * 3  # a new window
            refused = await admit(limit, "limited")
        assert refused is not None and refused.code == "rate_limited"
        assert seen == ["unavailable"] * 3
        assert [r.getMessage().split(":")[0] for r in caplog.records] == [
            "rate limits not enforced", "rate limits enforced again"]
    finally:
        await client.aclose()
        redis.stop()


@pytest.fixture
def silent_redis() -> Iterator[int]:
    """A port that accepts connections and never answers (a Redis stuck in a long command)."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()


async def test_a_silent_redis_costs_one_timeout_and_lets_the_request_through(silent_redis: int) -> None:
    client = redis_client(f"redis://127.0.0.1:{silent_redis}/0", timeout=0.1)
    seen = Unenforced()
    limit = RateLimit(parse_policy(POLICY), client, unenforced=seen)
    try:
        started = time.monotonic()
        assert await admit(limit, "limited") is None
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()
    assert seen == ["timeout"]
    assert 0.09 <= elapsed < 2.0  # one 100 ms read timeout, no retries (wide margin above)


def test_rpm_and_tpm_are_optional_positive_integers() -> None:
    policy = parse_policy(POLICY)
    assert [(t.name, t.rpm, t.tpm) for t in policy.tiers] == [
        ("limited", 3, None), ("tokens", None, 100), ("both", 5, 50), ("open", None, None)]
    bad = POLICY.replace("rpm: 3", "rpm: 0").replace("tpm: 100", "tpm: 1.5").replace("rpm: 5", "rpm: true")
    bad = bad.replace("open:    {markup: 0,", "open:    {markup: 0, tpm: x, rpm: -2,")
    with pytest.raises(ConfigError) as info:
        parse_policy(bad, source="p.yaml")
    assert str(info.value).splitlines() == [
        "p.yaml: tiers.limited.rpm must be a positive integer (omit it for no limit), got 0",
        "p.yaml: tiers.tokens.tpm must be a positive integer (omit it for no limit), got Decimal('1.5')",
        "p.yaml: tiers.both.rpm must be a positive integer (omit it for no limit), got True",
        "p.yaml: tiers.open.rpm must be a positive integer (omit it for no limit), got -2",
        "p.yaml: tiers.open.tpm must be a positive integer (omit it for no limit), got 'x'",
    ]


def test_the_shipped_free_tier_is_limited(policy: PolicyConfig) -> None:
    assert [(t.name, t.rpm, t.tpm) for t in policy.tiers] == [
        ("free", 60, 100_000), ("starter", None, None), ("professional", None, None), ("enterprise", None, None)]


async def test_rate_limit_runs_right_after_resolve_org(
    redis_server: services.Service, policy: PolicyConfig, catalogue: Catalogue, keybox: KeyBox,
    counter: TokenCounter,
) -> None:
    class NoKeys:
        async def get(self, key_hash: str) -> None:
            return None

    client = redis_client(redis_server.url)
    try:
        chain = default_policies(keys=NoKeys(), directory=FakeDirectory(), ledger=FakeLedger(), policy=policy,
                                 catalogue=catalogue, keybox=keybox, counter=counter, redis=client)
    finally:
        await client.aclose()
    assert [type(p) for p in chain] == [
        Authenticate, ResolveOrg, RateLimit, RewriteModel, InjectProviderKey, ReserveCredits]


def test_unenforced_metric_has_bounded_labels() -> None:
    metrics = Metrics()
    for reason in ("timeout", "unavailable", "unavailable", "org_123"):
        metrics.ratelimit_skipped(reason)
    samples = {reason: metrics.registry.get_sample_value("creditgate_ratelimit_unenforced_total",
                                                         {"reason": reason})
               for reason in ("timeout", "unavailable", "other", "org_123")}
    assert samples == {"timeout": 1.0, "unavailable": 2.0, "other": 1.0, "org_123": None}
