"""RateLimit through a real Redis: GCRA buckets that admit exactly the limit in a burst (also at the
old window boundary) and one request per emission interval after it, Retry-After and retry-after-ms
measured against the true wait, member and org limits where a refusal by one is counted by neither,
tpm reserved from the bound under concurrency and corrected at settlement, a bound larger than the
limit, OpenAI's x-ratelimit-* headers; and with Redis down or silent, requests pass and are counted.
Also the policy file's limits and the chain's wiring."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

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
from policies.ratelimit import duration, redis_client
from proxy.config.catalogue import Catalogue
from proxy.config.policy import PolicyConfig, parse_policy
from proxy.config.settings import ConfigError
from proxy.directory.crypto import KeyBox
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext, Usage
from proxy.gateway.tokens import TokenCounter
from proxy.ops.metrics import Metrics
from tests.fakes import FakeLedger
from tests.policies.policy_support import (
    MESSAGES,
    FakeDirectory,
    admitted,
    answered,
    credits_for,
    member,
    prompt_bound,
    run,
)

POLICY = """
credits_per_usd: 1000
default_power_level: eco
power_levels:
  eco: {multiplier: 0.1, max_tokens: 10, models: [fake-small]}
tiers:
  limited: {markup: 0, rpm: 3, models: ["*"]}
  tokens:  {markup: 0, tpm: 100, models: ["*"]}
  both:    {markup: 0, rpm: 5, tpm: 50, models: ["*"]}
  shared:  {markup: 0, rpm: 3, org_rpm: 5, tpm: 100, org_tpm: 150, models: ["*"]}
  open:    {markup: 0, models: ["*"]}
"""
MINUTE = 60_000_000  # microseconds
HOUR = 60 * MINUTE


class Unenforced(list[str]):
    def __call__(self, reason: str) -> None:
        self.append(reason)


@pytest.fixture
async def client(redis_server: services.Service) -> AsyncIterator[Redis]:
    redis = redis_client(redis_server.url, timeout=2.0)  # enforced even on a loaded machine
    try:
        yield redis
    finally:
        await redis.aclose()


def limiter(redis: Redis, *, period: float = 60.0, seen: Unenforced | None = None) -> RateLimit:
    prefix = f"test:ratelimit:{time.monotonic_ns()}"  # the session's Redis is shared
    return RateLimit(parse_policy(POLICY), redis, unenforced=seen, period_seconds=period, prefix=prefix)


def ctx_of(tier: str, org: str = "org_a", user: str = "usr_1") -> RequestContext:
    ctx = RequestContext(request_id="r", route="chat/completions", headers={}, body={})
    ctx.membership = member(org, user_id=user, tier=tier)
    return ctx


async def admit(limit: RateLimit, tier: str, org: str = "org_a", user: str = "usr_1",
                tokens: int = 0) -> ProxyError | None:
    """None when admitted, the refusal otherwise (the request's cleanup runs at once, unanswered)."""
    ctx = ctx_of(tier, org, user)
    async with ctx.cleanup:
        try:
            await limit(ctx)
            await limit.reserve_tokens(ctx, tokens)
        except ProxyError as err:
            return err
    return None


async def state(redis: Redis, limit: RateLimit, tier: str, unit: str, scope: str, *, org: str = "org_a",
                user: str = "usr_1") -> tuple[int, int]:
    """A bucket's stored (level, Redis time in microseconds)."""
    (bucket,) = [b for b in limit.buckets(ctx_of(tier, org, user), unit) if b.scope == scope]
    stored = await redis.get(bucket.key)
    level, stamp = (int(v) for v in str(stored, "ascii").split(":")) if isinstance(stored, bytes) else (0, 0)
    return level, stamp


async def room(redis: Redis, limit: RateLimit, tier: str, unit: str, scope: str, *, org: str = "org_a",
               user: str = "usr_1", period: int = MINUTE) -> float:
    """What the bucket has left now, in requests or tokens, read from its Redis state."""
    (bucket,) = [b for b in limit.buckets(ctx_of(tier, org, user), unit) if b.scope == scope]
    stored, stamp = await state(redis, limit, tier, unit, scope, org=org, user=user)
    seconds, micros = await redis.time()
    level = max(0, stored - max(0, seconds * 1_000_000 + micros - stamp) * bucket.limit)
    return (bucket.limit * period - level) / period


def retry_ms(err: ProxyError | None) -> int:
    assert err is not None and err.status == 429
    return int(err.headers["retry-after-ms"])


async def admitted_when(limit: RateLimit, tier: str, *, poll: float = 0.02, deadline: float = 10.0) -> float:
    """Seconds until a request of `tier` is admitted, polling (refusals count nothing)."""
    started = time.monotonic()
    while await admit(limit, tier) is not None:
        assert time.monotonic() - started < deadline
        await asyncio.sleep(poll)
    return time.monotonic() - started


async def test_a_burst_admits_exactly_the_limit_and_retry_after_is_the_true_wait(client: Redis) -> None:
    limit = limiter(client, period=3.0)  # rpm 3 over 3 s: one request more every second
    started = time.monotonic()
    answers = await asyncio.gather(*(admit(limit, "limited") for _ in range(12)))
    refused = [a for a in answers if a is not None]
    assert len(refused) == 9 - int((time.monotonic() - started) // 1.0)  # 9 unless the burst took a second
    wait = retry_ms(refused[-1]) / 1000
    assert 0.5 < wait <= 1.0  # one emission interval, less the burst's own few milliseconds
    assert refused[-1].headers["retry-after"] == "1"  # whole seconds, rounded up
    assert refused[-1].body() == {"error": {
        "message": f"Rate limit reached: 3 requests per minute per member. Try again in {wait:.3f} s.",
        "type": "rate_limit_error", "param": None, "code": "rate_limited"}}
    measured = await admitted_when(limit, "limited")
    assert abs(measured - wait) < 0.25, (measured, wait)  # retry-after-ms: to the poll and a round trip
    assert abs(int(refused[-1].headers["retry-after"]) - measured) < 1.0
    assert await admit(limit, "limited") is not None  # and only one: the next is a second away


async def test_a_burst_at_the_old_window_boundary_admits_at_most_the_limit(client: Redis) -> None:
    """The fixed window let rpm through just before its end and rpm again just after: 2 x rpm in a
    moment. A bucket admits the limit once, then one per emission interval (1 s here)."""
    limit = limiter(client, period=3.0)
    assert await admit(limit, "limited") is None  # opened the old window
    await asyncio.sleep(2.85)  # just before the old window's end (the first request has drained)
    started = time.monotonic()
    before = await asyncio.gather(*(admit(limit, "limited") for _ in range(5)))
    await asyncio.sleep(0.3)  # just after it
    after = await asyncio.gather(*(admit(limit, "limited") for _ in range(5)))
    span = time.monotonic() - started
    admitted = [a is None for a in before + after].count(True)
    assert admitted == 3 + int(span // 1.0)  # the fixed window admitted 2 + 3 here; a bucket 3 (in under 1 s)


async def test_member_and_org_limits_and_a_refusal_by_one_is_counted_by_neither(client: Redis) -> None:
    limit = limiter(client)  # shared: rpm 3 per member, org_rpm 5
    assert [await admit(limit, "shared", user="ann") for _ in range(3)] == [None] * 3
    refused = await admit(limit, "shared", user="ann")  # the member's limit
    assert refused is not None and refused.message.startswith("Rate limit reached: 3 requests per minute per member.")
    assert 19.0 < retry_ms(refused) / 1000 <= 20.0  # 60 s / 3: the member's next slot
    assert math.floor(await room(client, limit, "shared", "requests", "org")) == 2  # ann's refusal not counted there
    assert [await admit(limit, "shared", user="bob") for _ in range(2)] == [None] * 2
    refused = await admit(limit, "shared", user="bob")  # the org's limit
    assert refused is not None and refused.message.startswith(
        "Rate limit reached: 5 requests per minute for the organization.")
    assert 11.0 < retry_ms(refused) / 1000 <= 12.0  # 60 s / 5
    assert math.floor(await room(client, limit, "shared", "requests", "member", user="bob")) == 1  # not counted
    assert [await admit(limit, "shared", org="org_b", user="ann") for _ in range(3)] == [None] * 3  # another org


async def test_tpm_is_reserved_from_the_bound_so_concurrency_cannot_overshoot(client: Redis) -> None:
    limit = limiter(client)  # tokens: tpm 100
    contexts = [ctx_of("tokens") for _ in range(10)]

    async def reserve(ctx: RequestContext) -> ProxyError | None:
        try:
            await limit.reserve_tokens(ctx, 30)
        except ProxyError as err:
            return err
        return None

    answers = await asyncio.gather(*(reserve(ctx) for ctx in contexts))  # 10 x 30 against 100: three fit
    assert [a is None for a in answers].count(True) == 3
    refused = next(a for a in answers if a is not None)
    assert refused.message.startswith("Rate limit reached: 100 tokens per minute per member. This request may use "
                                      "30 tokens (its prompt and output cap). Try again in ")
    assert 11.5 < retry_ms(refused) / 1000 <= 12.0  # 90 held, 70 must be left: 20 tokens at 100 per minute
    assert math.floor(await room(client, limit, "tokens", "tokens", "member")) == 10
    served = [ctx for ctx, a in zip(contexts, answers, strict=True) if a is None]
    # the three end having used 10, 30 and no tokens (an upstream error)
    served[0].upstream_status, served[0].usage = 200, Usage(4, 6)
    served[1].upstream_status, served[1].usage = 200, Usage(10, 20)
    served[2].upstream_status = 502
    for ctx in served:
        await ctx.cleanup.aclose()
    assert math.floor(await room(client, limit, "tokens", "tokens", "member")) == 60  # 40 used of 90 held
    assert [await admit(limit, "tokens", tokens=30) for _ in range(2)] == [None, None]  # room again


@pytest.mark.parametrize(("usage", "status", "streamed", "used"), [
    (Usage(40, 30), 200, 0, 70),  # LiteLLM's usage
    (None, 200, 5, 12),  # a broken stream: the prompt (7) and what was streamed
    (None, 502, 0, 0),  # an upstream error: nothing
    (None, None, 0, 0),  # never answered (refused later in the chain): nothing
    (Usage(100, 20), 200, 0, 120),  # more than held: the excess is counted too
])
async def test_settlement_replaces_the_reservation_with_the_tokens_used(
    client: Redis, usage: Usage | None, status: int | None, streamed: int, used: int,
) -> None:
    limit = limiter(client)
    ctx = ctx_of("shared")
    async with ctx.cleanup:
        await limit(ctx)
        await limit.reserve_tokens(ctx, 80)
        assert math.floor(await room(client, limit, "shared", "tokens", "member")) == 20
        assert math.floor(await room(client, limit, "shared", "tokens", "org")) == 70
        ctx.upstream_status, ctx.usage, ctx.prompt_tokens = status, usage, 7
        for _ in range(streamed):
            ctx.meter.feed("")
    assert math.floor(await room(client, limit, "shared", "tokens", "member")) == min(100, 100 - used)
    assert math.floor(await room(client, limit, "shared", "tokens", "org")) == 150 - used


async def test_org_tokens_are_shared_and_a_token_refusal_gives_the_request_back(client: Redis) -> None:
    limit = limiter(client)  # shared: tpm 100 per member, org_tpm 150; rpm 3, org_rpm 5
    ann, bob = ctx_of("shared", user="ann"), ctx_of("shared", user="bob")
    for ctx in (ann, bob):
        await limit(ctx)
        await limit.reserve_tokens(ctx, 70)
    refused = await admit(limit, "shared", user="ann", tokens=20)  # ann has 30 left, the org only 10
    assert refused is not None and refused.message.startswith(
        "Rate limit reached: 150 tokens per minute for the organization.")
    assert math.floor(await room(client, limit, "shared", "tokens", "member", user="ann")) == 30  # not reserved
    assert math.floor(await room(client, limit, "shared", "requests", "member", user="ann")) == 2  # given back
    assert math.floor(await room(client, limit, "shared", "requests", "org")) == 3


async def test_a_bound_larger_than_the_limit_runs_on_a_full_bucket_and_borrows(client: Redis) -> None:
    limit = limiter(client)  # tokens: tpm 100
    assert await admit(limit, "tokens", tokens=1) is None  # admitted and corrected to 0: full again
    big = ctx_of("tokens")
    await limit.reserve_tokens(big, 150)  # a full bucket: admitted, 50 borrowed
    small = await admit(limit, "tokens", tokens=1)
    assert 30.0 < retry_ms(small) / 1000 <= 30.6  # 51 tokens must drain at 100 per minute
    await big.cleanup.aclose()  # it used nothing: all given back
    assert await admit(limit, "tokens", tokens=1) is None
    holder = ctx_of("tokens")
    await limit.reserve_tokens(holder, 1)  # one token in use: the big one waits for it
    refused = await admit(limit, "tokens", tokens=150)
    assert refused is not None and refused.message.startswith(
        "Rate limit reached: 100 tokens per minute per member. This request may use 150 tokens (its prompt and "
        "output cap), more than the whole limit: it runs when none are in use. Try again in 0.")
    assert 0.1 < retry_ms(refused) / 1000 <= 0.6  # one token drains in 0.6 s (less what the steps took)


async def test_openai_rate_limit_headers(client: Redis) -> None:
    limit = limiter(client)
    ctx = ctx_of("shared")
    await limit(ctx)
    await limit.reserve_tokens(ctx, 40)
    assert ctx.response_headers == {  # a fresh bucket: exact; the member's buckets are the tighter ones
        "x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "2", "x-ratelimit-reset-requests": "20s",
        "x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "60", "x-ratelimit-reset-tokens": "24s",
    }
    assert ctx.ratelimit == "counted"


def test_reset_durations_are_openai_s_format() -> None:
    cases = {0: "0s", 1: "1ms", 350_000: "350ms", 999_001: "1s", 1_500_000: "1.5s", 24_000_000: "24s",
             360_000_000: "6m0s", 90_250_000: "1m30.25s", 3_602_250_000: "1h0m2.25s"}
    assert {us: duration(us) for us in cases} == cases


async def test_a_tier_without_limits_never_touches_redis(client: Redis) -> None:
    seen = Unenforced()
    limit = limiter(client, seen=seen)
    assert [await admit(limit, "open", tokens=500) for _ in range(50)] == [None] * 50
    assert [await admit(limit, "no-such-tier", tokens=500) for _ in range(5)] == [None] * 5
    assert [k async for k in client.scan_iter(match=f"{limit._prefix}:*")] == []
    assert seen == []


async def test_redis_down_lets_requests_through_counted_once_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = redis_client(f"redis://127.0.0.1:{services.free_port()}/0")  # nothing listens there
    seen = Unenforced()
    limit = limiter(client, seen=seen)
    try:
        with caplog.at_level(logging.WARNING, logger="creditgate.ratelimit"):
            started = time.monotonic()
            assert [await admit(limit, "limited") for _ in range(6)] == [None] * 6
            assert await admit(limit, "both", tokens=500) is None  # rpm unchecked: tpm not asked again
            assert await admit(limit, "tokens", tokens=500) is None  # tpm alone
            elapsed = time.monotonic() - started
    finally:
        await client.aclose()
    assert seen == ["unavailable"] * 8  # once per request
    assert [r.getMessage() for r in caplog.records] == [
        "rate limits not enforced: Redis unavailable (ConnectionError); 1 request(s) let through unchecked "
        "since the last warning"]
    assert elapsed < 5.0  # refused connections fail at once (wide margin for a loaded machine)


async def test_limits_come_back_with_a_restarted_redis(caplog: pytest.LogCaptureFixture) -> None:
    """A new Redis knows neither the buckets nor the scripts (EVALSHA's NOSCRIPT loads them again)."""
    redis = services.start_redis()
    client = redis_client(redis.url, timeout=2.0)
    seen = Unenforced()
    limit = limiter(client, seen=seen)
    try:
        assert [await admit(limit, "limited") for _ in range(2)] == [None, None]
        redis.stop()
        with caplog.at_level(logging.WARNING, logger="creditgate.ratelimit"):
            assert [await admit(limit, "limited") for _ in range(3)] == [None] * 3
            assert seen == ["unavailable"] * 3
            redis = services.start_redis(port=redis.port)
            assert [await admit(limit, "limited") for _ in range(3)] == [None] * 3  # a full bucket
            refused = await admit(limit, "limited")
        assert refused is not None and refused.code == "rate_limited"
        assert seen == ["unavailable"] * 3
        assert [r.getMessage().split(":")[0] for r in caplog.records] == [
            "rate limits not enforced", "rate limits enforced again"]
    finally:
        await client.aclose()
        redis.stop()


async def test_a_lost_correction_is_logged_and_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    redis = services.start_redis()
    client = redis_client(redis.url, timeout=2.0)
    limit = limiter(client)
    try:
        ctx = ctx_of("tokens")
        with caplog.at_level(logging.WARNING, logger="creditgate.ratelimit"):
            async with ctx.cleanup:
                await limit.reserve_tokens(ctx, 40)
                redis.stop()
                ctx.upstream_status, ctx.usage = 200, Usage(1, 1)
        assert [r.getMessage() for r in caplog.records] == [
            "rate limit correction lost (ConnectionError): the reservation drains within a minute"]
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
    limit = limiter(client, seen=seen)
    try:
        started = time.monotonic()
        assert await admit(limit, "both", tokens=10) is None
        elapsed = time.monotonic() - started
    finally:
        await client.aclose()
    assert seen == ["timeout"]
    assert 0.09 <= elapsed < 2.0  # one 100 ms read timeout, no retries, tpm not asked (wide margin above)


def test_limits_are_optional_positive_integers() -> None:
    policy = parse_policy(POLICY)
    assert [(t.name, t.rpm, t.tpm, t.org_rpm, t.org_tpm) for t in policy.tiers] == [
        ("limited", 3, None, None, None), ("tokens", None, 100, None, None), ("both", 5, 50, None, None),
        ("shared", 3, 100, 5, 150), ("open", None, None, None, None)]
    bad = POLICY.replace("org_rpm: 5", "org_rpm: 100000001").replace("org_tpm: 150", "org_tpm: -1")
    bad = bad.replace(" rpm: 3,", " rpm: 0,").replace(" tpm: 100,", " tpm: 1.5,").replace(" rpm: 5,", " rpm: true,")
    bad = bad.replace("open:    {markup: 0,", "open:    {markup: 0, tpm: x, rpm: -2,")
    with pytest.raises(ConfigError) as info:
        parse_policy(bad, source="p.yaml")
    rule = "must be a positive integer of at most 100000000 (omit it for no limit), got"
    assert str(info.value).splitlines() == [
        f"p.yaml: tiers.limited.rpm {rule} 0",
        f"p.yaml: tiers.tokens.tpm {rule} Decimal('1.5')",
        f"p.yaml: tiers.both.rpm {rule} True",
        f"p.yaml: tiers.shared.rpm {rule} 0",
        f"p.yaml: tiers.shared.tpm {rule} Decimal('1.5')",
        f"p.yaml: tiers.shared.org_rpm {rule} 100000001",
        f"p.yaml: tiers.shared.org_tpm {rule} -1",
        f"p.yaml: tiers.open.rpm {rule} -2",
        f"p.yaml: tiers.open.tpm {rule} 'x'",
    ]


def test_the_shipped_free_tier_is_limited(policy: PolicyConfig) -> None:
    assert [(t.name, t.rpm, t.tpm, t.org_rpm, t.org_tpm) for t in policy.tiers] == [
        ("free", 60, 100_000, 600, 1_000_000), ("starter", None, None, None, None),
        ("professional", None, None, None, None), ("enterprise", None, None, None, None)]


async def test_the_chain_reserves_the_hold_s_token_bound_before_the_money(
    client: Redis, policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter,
) -> None:
    """Through ReserveCredits with the shipped free tier (tpm 100,000): the reservation is the prompt's
    bound plus the level's output cap; a request the tokens refuse holds no money."""
    # limits per hour instead of per minute: the level drains 60 times slower, so the 247 tokens given back
    # are not drained away (148 ms at 100,000 a minute) before the correction on a slow machine
    limit = RateLimit(policy, client, prefix=f"test:ratelimit:{time.monotonic_ns()}", period_seconds=3600)
    ledger = FakeLedger()
    credits = credits_for(ledger, policy, catalogue, counter, limit_tokens=limit.reserve_tokens)
    body = {"model": "fake-small", "messages": MESSAGES}
    ctx = await admitted(policy, catalogue, body, tier="free", level="eco")
    bound = prompt_bound(counter.prompt_tokens("chat/completions", ctx.body)) + 2000  # eco caps max_tokens at 2000

    held: list[tuple[int, int]] = []

    async def serve(ctx: RequestContext) -> None:  # fresh buckets: their levels are exactly the bound
        held.extend([await state(client, limit, "free", "tokens", "member"),
                     await state(client, limit, "free", "tokens", "org")])
        await answered(Usage(17, 230))(ctx)

    await run(credits, ctx, serve)
    assert [level for level, _ in held] == [bound * HOUR] * 2
    level, stamp = await state(client, limit, "free", "tokens", "member")  # 247 tokens used: the rest given back
    assert level == bound * HOUR - (stamp - held[0][1]) * 100_000 + (247 - bound) * HOUR
    big = await admitted(policy, catalogue, {**body, "n": 60}, tier="free", level="eco")  # 60 x 2000 > what is left
    with pytest.raises(ProxyError) as info:
        await run(credits, big, answered(Usage(1, 1)))
    assert info.value.code == "rate_limited" and len(ledger.holds) == 1


async def test_rate_limit_runs_right_after_resolve_org(
    client: Redis, policy: PolicyConfig, catalogue: Catalogue, keybox: KeyBox, counter: TokenCounter,
) -> None:
    class NoKeys:
        async def get(self, key_hash: str) -> None:
            return None

    chain = default_policies(keys=NoKeys(), directory=FakeDirectory(), ledger=FakeLedger(), policy=policy,
                             catalogue=catalogue, keybox=keybox, counter=counter, redis=client)
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
