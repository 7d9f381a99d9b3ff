"""Settlement of one admitted request: settle or void exactly once, shielded from cancellation.

Usage from LiteLLM -> `provider`, at the price of the deployment that answered; no usage but output
seen (or a served answer, or a non-stream call the client left) -> `estimate` (counted prompt plus
counted output); nothing served -> void. A ledger that stays unavailable leaves the hold to the
sweeper, which settles it from its checkpoint at expiry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TypeVar

from proxy.config.catalogue import Model, Price
from proxy.errors import ProxyError
from proxy.gateway.body import positive_int
from proxy.gateway.context import RequestContext, Usage
from proxy.ledger import tariffs
from proxy.ledger.types import ESTIMATE, PROVIDER, Ledger, Settlement

log = logging.getLogger("creditgate.credits")
T = TypeVar("T")

Record = Callable[[str, Settlement | None], None]
"""Metrics hook: outcome ("posted" | "late_posted" | "already_settled" | "voided" | "failed") and
the settlement (None for a void or a failure)."""

IMAGES = "images/generations"


def requested(body: dict[str, object], name: str) -> int:
    """A positive count the request asks for (`n`, `best_of`), else 1."""
    value = body.get(name)
    return value if positive_int(value) else 1


class Books:
    """What reserving and settling share: the ledger and its retry, the integer tariffs, and the hooks
    that count outcomes. ReserveCredits owns one and hands it to each request's Settle."""

    def __init__(self, ledger: Ledger, credits_per_usd: Decimal, *, record: Record | None = None,
                 on_overage: Callable[[str, int], None] | None = None, retry_seconds: float = 15.0) -> None:
        self.ledger = ledger
        self.record: Record = record or (lambda outcome, settlement: None)
        self.on_overage = on_overage or (lambda model, millicredits: None)
        self._credits_per_usd = credits_per_usd
        self._retry_seconds = retry_seconds
        self._tariffs: dict[tuple[Price, Decimal], tariffs.Tariff] = {}

    def tariff(self, price: Price, factor: Decimal) -> tariffs.Tariff:
        """The integer tariff of `price` at `factor`, computed once per (price, factor)."""
        key = (price, factor)
        if key not in self._tariffs:
            self._tariffs[key] = tariffs.Tariff.of(price, self._credits_per_usd, factor)
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
        self._task: asyncio.Task[None] | None = None

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
                self._owner.record("voided", None)
            else:
                if settlement.charge > hold.amount:
                    self._overage(settlement.charge - hold.amount)
                result = await self._owner.retry(lambda: ledger.settle(hold.org_id, hold.request_id, settlement))
                ctx.response_headers["X-Credits-Charged"] = str(result.charged)
                if result.remaining is not None:
                    ctx.response_headers["X-Credits-Remaining"] = str(result.remaining)
                self._owner.record(result.status, settlement)
        except Exception as exc:  # the hold stays; the sweeper settles it from its checkpoint at expiry
            log.error(
                "settlement failed; the sweeper will settle request %s at expiry: %s",
                hold.request_id,
                type(exc).__name__,
            )
            self._owner.record("failed", settlement)

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
            return self._settlement(ESTIMATE, ctx.prompt_tokens, ctx.meter.tokens(), None)
        return None

    def _settlement(self, source: str, prompt: int, completion: int, images: int | None) -> Settlement:
        """Priced per image when `images` is given, else per token."""
        ctx, model = self._ctx, self._model
        price = model.price_for(ctx.deployment_id)
        units = (prompt, completion, 0) if images is None else (0, 0, images)
        charge = 0 if ctx.byok else self._owner.tariff(price, self._factor).charge(*units)
        listed = self._owner.tariff(price, Decimal(1)).charge(*units)
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

