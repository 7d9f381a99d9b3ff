"""RateLimit: per-member request and token rate limits by tier, kept in Redis (CONTRACT.md: 429
`rate_limited` with `Retry-After`; with Redis unavailable, rate limits are not enforced, logged and
counted, and money is unaffected).

A tier's `rpm` / `tpm` (policy file) limit each member, i.e. each (org, user) pair, across every
replica. Windows are fixed, one minute long, opened by the member's first request and timed by
Redis itself (a key's TTL), so replicas never disagree about clocks and `Retry-After` is exactly
when the window that refused the request ends (rounded up to whole seconds).

- rpm: the request is counted, then refused when it is beyond `rpm` in the window.
- tpm: the request is refused while the tokens counted in the window have reached `tpm`; the
  tokens of an answered request (LiteLLM's usage, else prompt plus what was streamed) are added
  after it ends. A request is never cut short for tokens: the limit applies from the next one.

Admission is one Redis round trip (one Lua script). It runs before ReserveCredits, so a refused
request holds and charges nothing. Redis down or slower than the client's socket timeout: the
request is allowed, `unenforced(reason)` counts it and a warning is logged at most once per
`log_every` seconds. This never fails closed: a rate limit is not money.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.config.policy import PolicyConfig
from proxy.directory.types import Membership
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext

log = logging.getLogger("creditgate.ratelimit")

# KEYS: requests counter, tokens counter. ARGV: window ms, 1 to count this request (rpm) else 0.
# Returns {requests in the window, its ms left, tokens in the window, its ms left}.
_ADMIT = """
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

# KEYS: tokens counter. ARGV: window ms, tokens to add. The first tokens of a window open it.
_SPEND = """
local tokens = redis.call('INCRBY', KEYS[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return tokens
"""

_UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)


def redis_client(url: str, *, timeout: float = 0.1) -> Redis:
    """The client RateLimit wants: a slow or absent Redis delays a request by about `timeout` seconds
    at most (connect, or one read) before the limit is skipped, so no retries and no health pings."""
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                          retry=Retry(NoBackoff(), 0), health_check_interval=0)


class RateLimit:
    """Refuses a member's request with 429 `rate_limited` (and `Retry-After`) when their tier's
    `rpm` or `tpm` is used up in the current window; tiers without limits never touch Redis.

    `redis` should have short socket timeouts and no retries (proxy/app.py builds it): its
    timeout is how long a slow Redis may delay a request before the limit is skipped.
    """

    reads_body = False  # runs before the body is read (proxy/gateway/passthrough.py)

    def __init__(
        self,
        policy: PolicyConfig,
        redis: Redis,
        *,
        unenforced: Callable[[str], None] | None = None,
        window_seconds: float = 60.0,
        log_every: float = 10.0,
        prefix: str = "creditgate:ratelimit",
    ) -> None:
        self._policy = policy
        self._redis = redis
        self._admit = redis.register_script(_ADMIT)
        self._spend = redis.register_script(_SPEND)
        self._unenforced = unenforced
        self._window_ms = max(1, round(window_seconds * 1000))
        self._log_every = log_every
        self._prefix = prefix
        self._last_log = float("-inf")
        self._skipped = 0  # unenforced since the last warning
        self._degraded = False  # the last admission could not ask Redis

    async def __call__(self, ctx: RequestContext) -> None:
        member = ctx.require_membership()
        tier = self._policy.tier(member.org_tier)
        if tier is None or (tier.rpm is None and tier.tpm is None):
            return
        keys = self._keys(member)
        try:
            result: list[Any] = await self._admit(keys=keys, args=[self._window_ms, int(tier.rpm is not None)])
            requests, requests_ttl, tokens, tokens_ttl = (int(v) for v in result)
        except _UNAVAILABLE as exc:
            self._skip(exc)
            return
        if self._degraded:
            self._degraded = False
            log.warning("rate limits enforced again: Redis answers")
        waits: list[int] = []
        if tier.rpm is not None and requests > tier.rpm:
            waits.append(requests_ttl)
        if tier.tpm is not None and tokens >= tier.tpm:
            waits.append(tokens_ttl)
        if waits:
            raise ProxyError.rate_limited(max(1, math.ceil(max(waits) / 1000)))
        if tier.tpm is not None:
            # pushed before ReserveCredits' settlement, so it runs after it (the stack unwinds LIFO)
            ctx.cleanup.push_async_callback(self._count_tokens, keys[1], ctx)

    def _keys(self, member: Membership) -> list[str]:
        # one hash tag per member: both counters live in the same cluster slot, as a script needs
        tag = f"{{{member.org_id}:{member.user_id}}}"
        return [f"{self._prefix}:{tag}:requests", f"{self._prefix}:{tag}:tokens"]

    async def _count_tokens(self, key: str, ctx: RequestContext) -> None:
        tokens = _tokens_used(ctx)
        if tokens <= 0:
            return
        try:
            await self._spend(keys=[key], args=[self._window_ms, tokens])
        except _UNAVAILABLE as exc:
            self._skip(exc)
        except Exception:  # noqa: BLE001 - counting tokens must never disturb the request's ending
            log.exception("rate limit token count failed")

    def _skip(self, exc: BaseException) -> None:
        reason = "timeout" if isinstance(exc, (RedisTimeoutError, asyncio.TimeoutError)) else "unavailable"
        if self._unenforced is not None:
            self._unenforced(reason)
        self._skipped += 1
        self._degraded = True
        now = time.monotonic()
        if now - self._last_log >= self._log_every:
            log.warning("rate limits not enforced: Redis %s (%s); %d request(s) let through unchecked since the "
                        "last warning",
                        reason, type(exc).__name__, self._skipped)
            self._last_log, self._skipped = now, 0


def _tokens_used(ctx: RequestContext) -> int:
    """What the request consumed: LiteLLM's usage, else (the stream broke or the client left) the
    prompt plus what was streamed; nothing when no answer started."""
    if ctx.usage is not None:
        return ctx.usage.prompt_tokens + ctx.usage.completion_tokens
    if ctx.upstream_status is None or ctx.upstream_status >= 400:
        return 0
    return ctx.prompt_tokens + ctx.meter.tokens()
