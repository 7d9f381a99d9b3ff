"""RateLimit: request and token rate limits per member and per org, kept in Redis (CONTRACT.md: 429
`rate_limited` with `Retry-After`; with Redis unavailable, rate limits are not enforced, logged and
counted, and money is unaffected).

A tier (policy file) may set `rpm` / `tpm` for each member (one user in one org) and `org_rpm` /
`org_tpm` for the whole org, across every replica. Each limit is a GCRA bucket (the generic cell rate
algorithm, in its continuous-state form): it holds `limit` requests or tokens, refills continuously at
`limit` per minute, and a request fits when what it needs is left. So a burst admits at most the limit
at any moment (never 2 x the limit around a window boundary), an idle member gets the whole limit back
after a minute, and one more request fits every `60 / rpm` seconds. The buckets' arithmetic is exact
(integers, in Redis's Lua) and timed by Redis's own clock (`TIME` in the script), so replicas never
disagree. `Retry-After` is the wait until the refused request would fit, rounded up to whole seconds;
`retry-after-ms` (which the OpenAI SDKs prefer) is the same wait to the millisecond. Every answer
carries OpenAI's `x-ratelimit-limit-*`, `-remaining-*` and `-reset-*` (time until the bucket is full
again, as "1.5s" / "6m0s") for requests and tokens, from the tighter of the member's and the org's.

- rpm (before the body is read, so a refused request costs no upload): the member's and the org's
  request buckets are checked and counted in one round trip, all or nothing: a request the org's
  bucket refuses is not counted against the member's, nor the other way round.
- tpm (inside ReserveCredits, once the request's token bound is known: the prompt's bound plus the
  output cap, times `n`): the bound is reserved from the member's and the org's token buckets in one
  round trip before any money is held, so concurrent requests cannot overshoot tpm; when either refuses,
  nothing is reserved and the request's rpm count is given back in the same round trip. When the request
  ends, the tokens it really used (LiteLLM's usage, else prompt plus what was streamed; none when it
  was not answered) replace the reservation: the unused part returns to the buckets.
- A request whose bound alone is larger than a token limit is admitted only when that bucket is full
  (no tokens of the last minute outstanding); it then borrows, and the bucket refills past the debt
  before the next request fits. Refusing it outright would make a long prompt with a large
  `max_tokens` impossible whatever the member's real use; the average stays within tpm either way.

Redis down or slower than the client's socket timeout: the request is allowed, `unenforced(reason)`
counts it once, and a warning is logged at most once per `log_every` seconds. This never fails closed:
a rate limit is not money.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.config.policy import RATE_LIMIT_MAX, PolicyConfig, Tier
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext

log = logging.getLogger("creditgate.ratelimit")

# A bucket's state is "level:stamp": its level in units of limit x microseconds (a request of cost c
# adds c x period; time drains `limit` per microsecond; the bucket is full at level 0 and has no room
# left at limit x period) as of `stamp`, Redis's clock in microseconds. Integers below 2**53 (limits and
# costs at most RATE_LIMIT_MAX), so Lua's doubles hold them exactly. A drained bucket has no key.
# KEYS: buckets. ARGV[1]: the period in microseconds; per key i: ARGV[1 + 2i] its limit and ARGV[2 + 2i]
# what to add (a cost, or a signed correction).
_BUCKETS = """
if redis.replicate_commands then redis.replicate_commands() end -- Redis < 5: writes after TIME (a no-op since)
local clock = redis.call('TIME')
local now = clock[1] * 1000000 + clock[2]
local period = tonumber(ARGV[1])
local limits, levels = {}, {}
for i = 1, #KEYS do
  limits[i], levels[i] = tonumber(ARGV[1 + 2 * i]), 0
  local state = redis.call('GET', KEYS[i])
  local at = state and string.find(state, ':', 1, true)
  if at then
    local drained = math.max(now - tonumber(string.sub(state, at + 1)), 0) * limits[i]
    levels[i] = math.max(tonumber(string.sub(state, 1, at - 1)) - drained, 0)
  end
end
local function add(i)
  levels[i] = math.max(levels[i] + tonumber(ARGV[2 + 2 * i]) * period, 0)
  if levels[i] > 0 then
    redis.call('SET', KEYS[i], string.format('%.0f:%.0f', levels[i], now), 'PX',
               math.floor(levels[i] / limits[i] / 1000) + 1)
  else
    redis.call('DEL', KEYS[i])
  end
end
"""

# ARGV[2]: n. The first n keys admit their cost together or not at all; the keys after them are changed
# only when the admission is refused (an earlier count given back). A cost beyond a bucket's whole
# capacity needs the bucket full, then borrows. Returns {microseconds to wait (0: admitted), the level of
# every key afterwards}.
_ADMIT = _BUCKETS + """
local admits, wait = tonumber(ARGV[2]), 0
for i = 1, admits do
  local room = (limits[i] - math.min(tonumber(ARGV[2 + 2 * i]), limits[i])) * period
  if levels[i] > room then wait = math.max(wait, math.ceil((levels[i] - room) / limits[i])) end
end
local result = {wait}
for i = 1, #KEYS do
  if (i <= admits) == (wait == 0) then add(i) end
  result[i + 1] = levels[i]
end
return result
"""

# Every key changed by its signed amount (the correction of a reservation at settlement).
_ADJUST = _BUCKETS + """
for i = 1, #KEYS do add(i) end
return 0
"""

_UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)
_WHOSE = {"member": "per member", "org": "for the organization"}


def redis_client(url: str, *, timeout: float = 0.1) -> Redis:
    """The client RateLimit wants: a slow or absent Redis delays a request by about `timeout` seconds
    at most (connect, or one read) before the limit is skipped, so no retries and no health pings."""
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                          retry=Retry(NoBackoff(), 0), health_check_interval=0)


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit of one member or org: its Redis key and how many requests or tokens per minute."""

    key: str
    limit: int
    scope: str  # "member" | "org"


class RateLimit:
    """Refuses a request with 429 `rate_limited` when a request or token bucket of its member or its org
    has no room for it; tiers without limits never touch Redis.

    The policy (`__call__`, before the body) checks the request buckets; `reserve_tokens` (ReserveCredits
    calls it with the request's token bound) the token buckets. `redis` should have short socket
    timeouts and no retries (proxy/app.py builds it): its timeout is how long a slow Redis may delay a
    request before the limit is skipped. `period_seconds` is for tests: the limits are per minute.
    """

    reads_body = False  # runs before the body is read (proxy/gateway/passthrough.py)

    def __init__(
        self,
        policy: PolicyConfig,
        redis: Redis,
        *,
        unenforced: Callable[[str], None] | None = None,
        period_seconds: float = 60.0,
        log_every: float = 10.0,
        prefix: str = "creditgate:ratelimit",
    ) -> None:
        self._policy = policy
        self._admit = redis.register_script(_ADMIT)  # EVALSHA, loading the script again on NOSCRIPT
        self._adjust = redis.register_script(_ADJUST)
        self._unenforced = unenforced
        self._period = max(1, round(period_seconds * 1_000_000))  # microseconds
        self._log_every = log_every
        self._prefix = prefix
        self._last_log: dict[str, float] = {}  # per warning: when it was last logged
        self._skipped = 0  # unenforced since the last warning
        self._degraded = False  # the last call could not ask Redis

    async def __call__(self, ctx: RequestContext) -> None:
        """Count the request in its member's and org's request buckets (both or neither), or raise 429."""
        buckets = self.buckets(ctx, "requests")
        if not buckets:
            return
        answer = await self._run(self._admit, buckets, [1] * len(buckets), len(buckets))
        if answer is None:
            ctx.ratelimit = "unchecked"
            return
        wait, levels = answer[0], answer[1:]
        self._describe(ctx, "requests", buckets, levels)
        if wait:
            raise self._refusal("requests", buckets, levels, 1, wait)
        ctx.ratelimit = "counted"

    async def reserve_tokens(self, ctx: RequestContext, tokens: int) -> None:
        """Reserve `tokens` (the request's bound) from its member's and org's token buckets, or raise 429
        and give back its request count; the real use replaces the reservation when the request ends."""
        if tokens <= 0 or ctx.ratelimit == "unchecked":
            return
        buckets = self.buckets(ctx, "tokens")
        if not buckets:
            return
        cost = min(tokens, RATE_LIMIT_MAX)
        counted = self.buckets(ctx, "requests") if ctx.ratelimit == "counted" else []
        changes = [cost] * len(buckets) + [-1] * len(counted)
        answer = await self._run(self._admit, [*buckets, *counted], changes, len(buckets))
        if answer is None:
            return
        wait, levels = answer[0], answer[1:]
        self._describe(ctx, "tokens", buckets, levels[:len(buckets)])
        if wait:
            if counted:
                ctx.ratelimit = ""
                self._describe(ctx, "requests", counted, levels[len(buckets):])
            raise self._refusal("tokens", buckets, levels, cost, wait)
        # pushed before ReserveCredits' settlement, so it runs after it (the stack unwinds LIFO)
        ctx.cleanup.push_async_callback(self._settle, ctx, buckets, cost)

    def buckets(self, ctx: RequestContext, unit: str) -> list[Bucket]:
        """The request's member's and org's buckets of `unit` ("requests" | "tokens") that the org's tier
        limits, under the configuration the request runs under (a reload changes the limits of the next
        requests). One hash tag per org: every bucket a script touches lives in the same cluster slot."""
        member = ctx.require_membership()
        policy = ctx.config.policy if ctx.config is not None else self._policy
        tier: Tier | None = policy.tier(member.org_tier)
        if tier is None:
            return []
        own, org = (tier.rpm, tier.org_rpm) if unit == "requests" else (tier.tpm, tier.org_tpm)
        tag = f"{self._prefix}:{{{member.org_id}}}"
        found = [Bucket(f"{tag}:{member.user_id}:{unit}", own, "member")] if own is not None else []
        return found + ([Bucket(f"{tag}:{unit}", org, "org")] if org is not None else [])

    async def _run(self, script: Any, buckets: Sequence[Bucket], changes: Sequence[int],
                   admits: int) -> list[int] | None:
        """One round trip; None (counted, logged) when Redis did not answer."""
        args = [self._period, admits]
        for bucket, change in zip(buckets, changes, strict=True):
            args += [bucket.limit, change]
        try:
            answer: list[Any] = await script(keys=[b.key for b in buckets], args=args)
        except _UNAVAILABLE as exc:
            self._skip(exc)
            return None
        if self._degraded:
            self._degraded = False
            log.warning("rate limits enforced again: Redis answers")
        return [int(v) for v in answer]

    async def _settle(self, ctx: RequestContext, buckets: list[Bucket], reserved: int) -> None:
        """Replace the reservation by the tokens the request used (giving back the rest)."""
        change = min(_tokens_used(ctx), RATE_LIMIT_MAX) - reserved
        if change == 0:
            return
        args = [self._period, 0]
        for bucket in buckets:
            args += [bucket.limit, change]
        try:
            await self._adjust(keys=[b.key for b in buckets], args=args)
        except Exception as exc:  # noqa: BLE001 - the reservation then drains by itself within the minute
            self._warn("correction", "rate limit correction lost (%s): the reservation drains within a minute",
                       type(exc).__name__)

    def _describe(self, ctx: RequestContext, unit: str, buckets: Sequence[Bucket], levels: Sequence[int]) -> None:
        """OpenAI's x-ratelimit-* headers of `unit`, from the bucket with the least room."""
        period = self._period
        bucket, level = min(zip(buckets, levels, strict=False), key=lambda bl: bl[0].limit * period - bl[1])
        ctx.response_headers[f"x-ratelimit-limit-{unit}"] = str(bucket.limit)
        ctx.response_headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, (bucket.limit * period - level) // period))
        ctx.response_headers[f"x-ratelimit-reset-{unit}"] = duration(-(-level // bucket.limit))

    def _refusal(self, unit: str, buckets: Sequence[Bucket], levels: Sequence[int], cost: int,
                 wait: int) -> ProxyError:
        """The 429, naming the limit that asks for the longest wait."""
        period = self._period

        def wait_of(bucket_level: tuple[Bucket, int]) -> float:
            bucket, level = bucket_level
            return (level - (bucket.limit - min(cost, bucket.limit)) * period) / bucket.limit

        bucket, _ = max(zip(buckets, levels, strict=False), key=wait_of)
        ms = max(1, -(-wait // 1000))  # rounded up: retrying after it never comes too early
        message = f"Rate limit reached: {bucket.limit} {unit} per minute {_WHOSE[bucket.scope]}."
        if unit == "tokens":
            message += f" This request may use {cost} tokens (its prompt and output cap)"
            message += ", more than the whole limit: it runs when none are in use." if cost > bucket.limit else "."
        return ProxyError.rate_limited(-(-ms // 1000), f"{message} Try again in {ms / 1000:.3f} s.", retry_after_ms=ms)

    def _skip(self, exc: BaseException) -> None:
        reason = "timeout" if isinstance(exc, (RedisTimeoutError, asyncio.TimeoutError)) else "unavailable"
        if self._unenforced is not None:
            self._unenforced(reason)
        self._skipped += 1
        self._degraded = True
        if self._warn("skip", "rate limits not enforced: Redis %s (%s); %d request(s) let through unchecked since the "
                      "last warning", reason, type(exc).__name__, self._skipped):
            self._skipped = 0

    def _warn(self, kind: str, message: str, *args: object) -> bool:
        """Log a warning of `kind` at most once per `log_every` seconds; True when logged."""
        now = time.monotonic()
        if now - self._last_log.get(kind, float("-inf")) < self._log_every:
            return False
        log.warning(message, *args)
        self._last_log[kind] = now
        return True


def duration(microseconds: int) -> str:
    """OpenAI's x-ratelimit-reset-* text (Go's duration format) in whole milliseconds, rounded up: "0s",
    "350ms", "1.5s", "6m0s", "1h0m2.25s"."""
    ms = -(-microseconds // 1000)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    return f"{hours}h{text}" if hours else text


def _tokens_used(ctx: RequestContext) -> int:
    """What the request consumed: LiteLLM's usage, else (the stream broke or the client left) the
    prompt plus what was streamed; nothing when no answer started."""
    if ctx.usage is not None:
        return ctx.usage.prompt_tokens + ctx.usage.completion_tokens
    if ctx.upstream_status is None or ctx.upstream_status >= 400:
        return 0
    return ctx.prompt_tokens + ctx.meter.tokens()
