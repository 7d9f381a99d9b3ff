"""Rate limiter benchmark (not a test): `python -m bench.ratelimit [--requests N] [--concurrency C]`.

The GCRA limiter (policies/ratelimit.py) against the fixed-window one it replaced (kept below, as it was,
as the baseline), in the same process against one Redis started here on a free 127.0.0.1 port. Per
request, the whole rate-limit work of a request that is admitted and answered:

- `rpm`: a tier with rpm only (one round trip, before the body);
- `rpm+tpm`: rpm and tpm per member (old: admission + the tokens counted after the answer, two round
  trips; new: admission + the bound reserved + the correction at settlement, three);
- `member+org`: rpm, tpm, org_rpm and org_tpm (new only: the same three round trips, two buckets each).

Reported: wall µs per request at concurrency 1 and at `--concurrency`, CPU µs per request of this
process (the client side: redis-py and the policy) and of redis-server (the Lua), with ratios against
the old limiter of the same run. With `throttled-py` importable (not a dependency), its GCRA (one key,
one round trip) is measured beside `rpm` for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from devstack import services
from policies.ratelimit import RateLimit, redis_client
from proxy.config.policy import PolicyConfig, parse_policy
from proxy.directory.types import Membership
from proxy.gateway.context import RequestContext, Usage

TICKS = os.sysconf("SC_CLK_TCK")
BIG = 100_000_000  # limits nobody reaches: every request is admitted
POLICY = f"""
credits_per_usd: 1000
default_power_level: eco
power_levels:
  eco: {{multiplier: 0.1, max_tokens: 10, models: [m]}}
tiers:
  rpm:        {{markup: 0, rpm: {BIG}, models: ["*"]}}
  both:       {{markup: 0, rpm: {BIG}, tpm: {BIG}, models: ["*"]}}
  member_org: {{markup: 0, rpm: {BIG}, tpm: {BIG}, org_rpm: {BIG}, org_tpm: {BIG}, models: ["*"]}}
"""

# ---------------------------------------------------------------- the fixed-window limiter it replaced

_OLD_ADMIT = """
local requests, requests_ttl = 0, 0
if ARGV[2] == '1' then
  requests = redis.call('INCR', KEYS[1])
  requests_ttl = redis.call('PTTL', KEYS[1])
  if requests_ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    requests_ttl = tonumber(ARGV[1])
  end
end
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
local tokens_ttl = redis.call('PTTL', KEYS[2])
return {requests, requests_ttl, tokens, tokens_ttl}
"""

_OLD_SPEND = """
local tokens = redis.call('INCRBY', KEYS[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return tokens
"""


class OldRateLimit:
    """The fixed one-minute window of the previous commit: one admission round trip; the tokens of an
    answered request counted after it (a second round trip when the tier has tpm)."""

    def __init__(self, policy: PolicyConfig, redis: Redis) -> None:
        self._policy = policy
        self._admit = redis.register_script(_OLD_ADMIT)
        self._spend = redis.register_script(_OLD_SPEND)

    async def __call__(self, ctx: RequestContext) -> None:
        member = ctx.require_membership()
        tier = self._policy.tier(member.org_tier)
        if tier is None or (tier.rpm is None and tier.tpm is None):
            return
        tag = f"{{{member.org_id}:{member.user_id}}}"
        keys = [f"old:{tag}:requests", f"old:{tag}:tokens"]
        result: list[Any] = await self._admit(keys=keys, args=[60_000, int(tier.rpm is not None)])
        requests, _, tokens, _ = (int(v) for v in result)
        if (tier.rpm is not None and requests > tier.rpm) or (tier.tpm is not None and tokens >= tier.tpm):
            raise RuntimeError("refused")
        if tier.tpm is not None:
            ctx.cleanup.push_async_callback(self._count, keys[1], ctx)

    async def _count(self, key: str, ctx: RequestContext) -> None:
        assert ctx.usage is not None
        await self._spend(keys=[key], args=[60_000, ctx.usage.prompt_tokens + ctx.usage.completion_tokens])

    async def reserve_tokens(self, ctx: RequestContext, tokens: int) -> None:
        """The old limiter reserved nothing."""


# ---------------------------------------------------------------- measuring

Limiter = OldRateLimit | RateLimit


def member(tier: str, n: int) -> Membership:
    return Membership(org_id=f"org_{n % 64}", user_id=f"usr_{n % 512}", role="member", is_default=False,
                      power_level=None, member_suspended=False, org_tier=tier, org_suspended=False)


def request(limiter: Limiter, tier: str) -> Callable[[int], Awaitable[None]]:
    """One request's rate-limit work: admission, the bound reserved, then the answer's usage settled."""

    async def run(n: int) -> None:
        ctx = RequestContext(request_id=f"r{n}", route="chat/completions", headers={}, body={})
        ctx.membership = member(tier, n)
        async with ctx.cleanup:
            await limiter(ctx)
            await limiter.reserve_tokens(ctx, 4_100)  # a short prompt's bound and max_tokens 4000
            ctx.upstream_status, ctx.usage = 200, Usage(17, 230)

    return run


def throttled_request(redis_url: str) -> Callable[[int], Awaitable[None]] | None:
    """throttled-py's Redis GCRA (one key, one round trip), when it is installed."""
    try:
        from throttled.asyncio import RateLimiterType, RedisStore, Throttled, per_min
    except ImportError:
        return None
    limiter = Throttled(using=RateLimiterType.GCRA.value, quota=per_min(BIG), store=RedisStore(server=redis_url))

    async def run(n: int) -> None:
        result = await limiter.limit(f"thr:{n % 512}")
        assert not result.limited

    return run


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def measure(work: Callable[[int], Awaitable[None]], count: int, concurrency: int,
                  redis_pid: int) -> tuple[float, float, float]:
    """(wall µs, client CPU µs, Redis CPU µs) per request."""
    for n in range(200):  # warm: scripts loaded, connections open
        await work(n)
    cpu, redis_cpu, started = time.process_time(), cpu_seconds(redis_pid), time.perf_counter()
    done = 0
    while done < count:
        batch = min(concurrency, count - done)
        await asyncio.gather(*(work(done + i) for i in range(batch)))
        done += batch
    wall = time.perf_counter() - started
    return (wall / count * 1e6, (time.process_time() - cpu) / count * 1e6,
            (cpu_seconds(redis_pid) - redis_cpu) / count * 1e6)


async def main(count: int, concurrency: int) -> None:
    redis = services.start_redis()
    clients: list[Redis] = []
    try:
        policy = parse_policy(POLICY)
        old_client, new_client = redis_client(redis.url, timeout=5.0), redis_client(redis.url, timeout=5.0)
        clients += [old_client, new_client]
        old, new = OldRateLimit(policy, old_client), RateLimit(policy, new_client)
        cases: list[tuple[str, Callable[[int], Awaitable[None]], Callable[[int], Awaitable[None]] | None]] = [
            ("rpm", request(new, "rpm"), request(old, "rpm")),
            ("rpm+tpm", request(new, "both"), request(old, "both")),
            ("member+org", request(new, "member_org"), request(old, "both")),
        ]
        third = throttled_request(redis.url)
        if third is not None:
            cases.append(("throttled-py GCRA (rpm)", third, request(old, "rpm")))
        print(f"{count} requests per cell; Redis {redis.url}; µs per request (ratio to the old limiter)")
        print(f"{'case':<26}{'c':>4}{'wall old':>10}{'wall new':>10}{'ratio':>7}"
              f"{'cpu old':>9}{'cpu new':>9}{'ratio':>7}{'redis old':>11}{'redis new':>11}{'ratio':>7}")
        pid = redis.proc.pid
        for name, work, baseline in cases:
            for c in (1, concurrency):
                base = await measure(baseline, count, c, pid) if baseline is not None else (math.nan,) * 3
                mine = await measure(work, count, c, pid)
                cells = "".join(f"{b:>10.0f}{m:>10.0f}{m / b:>7.2f}" if i == 0 else
                                f"{b:>9.0f}{m:>9.0f}{m / b:>7.2f}" if i == 1 else
                                f"{b:>11.0f}{m:>11.0f}{m / b:>7.2f}"
                                for i, (b, m) in enumerate(zip(base, mine, strict=True)))
                print(f"{name:<26}{c:>4}{cells}")
    finally:
        for client in clients:
            await client.aclose()
        redis.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))
