"""Settlement of one admitted request: settle or void exactly once, shielded from cancellation.

Usage from LiteLLM -> `provider`, at the price of the deployment that answered; no usage but output
seen (or a served answer, or a non-stream call the client left) -> `estimate` (counted prompt plus
counted output); nothing served -> void. A ledger that stays unavailable past the retry: the settlement
(or void) is appended to the local spool (proxy/ledger/spool.py), replayed when the database answers
again; without a spool, or when the spool cannot be written, the hold is left to the sweeper, which
settles it from its checkpoint at expiry.

A spooled non-stream answer carries `X-Credits-Charged` (the charge is exact: the usage and the price are
known) but no `X-Credits-Remaining` (the balance is unknown until the ledger answers); the request shows
`pending` at /v1/requests/{id} until the replay posts it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TypeVar

from proxy.config.catalogue import Model, Price
from proxy.db.pool import UNAVAILABLE
from proxy.errors import ProxyError
from proxy.gateway.body import positive_int
from proxy.gateway.context import RequestContext, Usage
from proxy.ledger import tariffs
from proxy.ledger.spool import Spool
from proxy.ledger.spool_entry import Entry
from proxy.ledger.types import ESTIMATE, PROVIDER, Ledger, Settlement

log = logging.getLogger("creditgate.credits")
T = TypeVar("T")

Record = Callable[[str, Settlement | None], None]
"""Metrics hook: outcome ("posted" | "late_posted" | "already_settled" | "voided" | "spooled" | "failed")
and the settlement (None for a void or a failure)."""

IMAGES = "images/generations"


def unavailable(exc: BaseException) -> bool:
    """Whether a failure means the ledger could not be reached (what the spool is for)."""
    return isinstance(exc, UNAVAILABLE) or (isinstance(exc, ProxyError) and exc.code == "ledger_unavailable")


def streamed(ctx: RequestContext) -> int:
    """The completion tokens counted offline so far, never above what the hold was sized for: the provider
    stops at the output cap, while the offline count of its chunks may read more tokens than it sent (a
    chunk split differently by o200k), and an estimate above the hold would be overage."""
    counted = ctx.meter.tokens()
    return counted if ctx.output_bound is None else min(counted, ctx.output_bound)


def requested(body: dict[str, object], name: str) -> int:
    """A positive count the request asks for (`n`, `best_of`), else 1."""
    value = body.get(name)
    return value if positive_int(value) else 1


class Books:
    """What reserving and settling share: the ledger and its retry, the spool, the integer tariffs, and the
    hooks that count outcomes. ReserveCredits owns one and hands it to each request's Settle.

    With a spool the retry lasts at most `spool.retry_seconds`: the spool keeps the settlement durably,
    so a non-stream client (whose answer waits for its settlement) is not held for the whole outage."""

    def __init__(self, ledger: Ledger, credits_per_usd: Decimal, *, record: Record | None = None,
                 on_overage: Callable[[str, int], None] | None = None, retry_seconds: float = 15.0,
                 spool: Spool | None = None) -> None:
        self.ledger = ledger
        self.spool = spool
        self.record: Record = record or (lambda outcome, settlement: None)
        self.on_overage = on_overage or (lambda model, millicredits: None)
        self.credits_per_usd = credits_per_usd
        self._retry_seconds = retry_seconds if spool is None else min(retry_seconds, spool.retry_seconds)
        self._tariffs: dict[tuple[Price, Decimal, Decimal], tariffs.Tariff] = {}

    def tariff(self, price: Price, factor: Decimal, credits_per_usd: Decimal | None = None) -> tariffs.Tariff:
        """The integer tariff of `price` at `factor` (and the request's `credits_per_usd`, which a reload may
        change; else the one the books were opened with), computed once per (price, factor, credits_per_usd)."""
        cpu = self.credits_per_usd if credits_per_usd is None else credits_per_usd
        key = (price, factor, cpu)
        if key not in self._tariffs:
            if len(self._tariffs) >= 4096:  # reloads add prices: keep the cache bounded
                self._tariffs.clear()
            self._tariffs[key] = tariffs.Tariff.of(price, cpu, factor)
        return self._tariffs[key]

    async def retry(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call`, retrying an unavailable ledger with backoff for at most `retry_seconds`."""
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self._retry_seconds, 0.05
        while True:
            try:
                return await call()
            except ProxyError as exc:
                if exc.code != "ledger_unavailable" or loop.time() + delay > deadline:
                    raise
            except Exception:
                if loop.time() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


class Settle:
    """The settle-or-void step of one request: runs once however many times it is awaited."""

    def __init__(self, books: Books, ctx: RequestContext, model: Model, factor: Decimal) -> None:
        self._owner, self._ctx, self._model, self._factor = books, ctx, model, factor
        # priced by the configuration the request was held under (policies/config.py), whatever a reload did since
        self._cpu = ctx.config.policy.credits_per_usd if ctx.config is not None else books.credits_per_usd
        self._task: asyncio.Task[None] | None = None

    def _record(self, outcome: str, settlement: Settlement | None) -> None:
        """Count the outcome (the metrics hook) and keep it on the context for the access line."""
        self._ctx.outcome, self._ctx.settlement = outcome, settlement
        self._owner.record(outcome, settlement)

    async def __call__(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._finish())
        cancelled = False
        while not self._task.done():  # shielded: a cancelled request still settles, then re-raises
            try:
                await asyncio.shield(self._task)
            except asyncio.CancelledError:
                if self._task.cancelled():
                    raise
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    async def _finish(self) -> None:
        ctx, ledger, hold = self._ctx, self._owner.ledger, self._ctx.hold
        assert hold is not None
        settlement: Settlement | None = None
        try:
            settlement = self.decide()
            if settlement is None:
                await self._owner.retry(lambda: ledger.void(hold.org_id, hold.request_id))
                self._record("voided", None)
            else:
                if settlement.charge > hold.amount:
                    self._overage(settlement.charge - hold.amount)
                result = await self._owner.retry(lambda: ledger.settle(hold.org_id, hold.request_id, settlement))
                ctx.response_headers["X-Credits-Charged"] = str(result.charged)
                if result.remaining is not None:
                    ctx.response_headers["X-Credits-Remaining"] = str(result.remaining)
                self._record(result.status, settlement)
        except Exception as exc:  # the hold stays; the sweeper settles it from its checkpoint at expiry
            if unavailable(exc) and await self._spool(settlement):
                return
            log.error(
                "settlement failed; the sweeper will settle request %s at expiry: %s",
                hold.request_id,
                type(exc).__name__,
            )
            self._record("failed", settlement)

    async def _spool(self, settlement: Settlement | None) -> bool:
        """Append the settlement (or the void) to the spool for replay; False without a spool or when it
        cannot be written. The charge is exact, so a non-stream answer still carries it."""
        spool, hold = self._owner.spool, self._ctx.hold
        if spool is None or hold is None:
            return False
        try:
            await spool.append(Entry.of(hold.org_id, hold.request_id, settlement, self._audit()))
        except Exception as exc:  # noqa: BLE001 - the caller logs the failure; the sweeper is the fallback
            log.error("could not spool the settlement of request %s: %s", hold.request_id, type(exc).__name__)
            return False
        if settlement is not None:
            self._ctx.response_headers["X-Credits-Charged"] = str(settlement.charge)
        log.warning("ledger unavailable: the settlement of request %s is spooled for replay", hold.request_id,
                    extra={"request_id": hold.request_id})
        self._record("spooled", settlement)
        return True

    def _audit(self) -> dict[str, object]:
        """What a spooled entry records beside the settlement: who, what, and the price inputs."""
        ctx, model, hold = self._ctx, self._model, self._ctx.hold
        price = model.price_for(ctx.deployment_id)
        return {
            "user_id": ctx.membership.user_id if ctx.membership else None,
            "key_id": ctx.key.id if ctx.key else None,
            "route": ctx.route, "stream": ctx.stream, "failure": ctx.failure, "byok": ctx.byok,
            "held_millicredits": hold.amount if hold else None,
            "price": {"input_cost_per_token": price.input, "output_cost_per_token": price.output,
                      "output_cost_per_image": price.image},
            "factor": self._factor, "credits_per_usd": self._cpu,
        }

    def _overage(self, excess: int) -> None:
        """A charge above its hold is a defect (the hold must bound every charge): counted and logged with
        the request id; the ledger records the excess as a receivable and `creditgate verify` reports it."""
        ctx, hold = self._ctx, self._ctx.hold
        assert hold is not None
        log.error(
            "overage: request %s of org %s charged %d millicredits above its hold of %d (model %s, usage %s)",
            hold.request_id, hold.org_id, excess, hold.amount, self._model.name,
            ctx.usage, extra={"request_id": hold.request_id},
        )
        self._owner.on_overage(self._model.name, excess)

    def decide(self) -> Settlement | None:
        """What to post: None = void (nothing was served)."""
        ctx = self._ctx
        if ctx.upstream_status is not None and ctx.upstream_status >= 400:
            return None
        images = ctx.route == IMAGES
        usage = ctx.usage or Usage(0, 0)
        if images and ctx.image_count is not None:
            return self._settlement(PROVIDER, usage.prompt_tokens, usage.completion_tokens, ctx.image_count)
        if not images and ctx.usage is not None:
            return self._settlement(PROVIDER, usage.prompt_tokens, usage.completion_tokens, None)
        # a 200 whose answer had no usage was still served (a non-stream answer is settled before it
        # is sent, so response_started is not set yet); a stream that broke was served up to the break
        answered = ctx.upstream_status is not None and ctx.failure in (None, "client_disconnected")
        # a non-stream client that left before the answer arrived within the drain bound: LiteLLM runs the
        # call to completion anyway (research/litellm.md §0.4), so at least the prompt was spent
        answered |= not ctx.stream and ctx.failure == "client_disconnected"
        if ctx.meter.chunks > 0 or ctx.response_started or answered:
            if images:  # served, count unknown: what was asked for
                return self._settlement(ESTIMATE, ctx.prompt_tokens, 0, requested(ctx.body, "n"))
            return self._settlement(ESTIMATE, ctx.prompt_tokens, streamed(ctx), None)
        return None

    def _settlement(self, source: str, prompt: int, completion: int, images: int | None) -> Settlement:
        """Priced per image when `images` is given, else per token."""
        ctx, model = self._ctx, self._model
        price = model.price_for(ctx.deployment_id)
        units = (prompt, completion, 0) if images is None else (0, 0, images)
        charge = 0 if ctx.byok else self._owner.tariff(price, self._factor, self._cpu).charge(*units)
        listed = self._owner.tariff(price, Decimal(1), self._cpu).charge(*units)
        deployment = model.deployment(ctx.deployment_id)
        return Settlement(
            prompt_tokens=prompt,
            completion_tokens=completion,
            charge=charge,
            list_price=listed,
            usage_source=source,
            model=model.name,
            provider=deployment.provider if deployment else model.provider,
            deployment=ctx.deployment_id,
        )

