"""ReserveCredits: hold an upper bound of the charge before forwarding; settle or void exactly once.

The hold bounds every part of the charge: the prompt (tokens.py's bound), `max_tokens` /
`max_completion_tokens` as RewriteModel clamped them, times `n` / `best_of` and the number of
prompts, at the HIGHEST price among the model's deployments, with markup and multiplier. Embeddings
are held by prompt, images by `n` times the per-image price. BYOK holds 0 (still reserved: the
request id is tracked and the list price recorded). An unpriced model is 403 unless BYOK.

Once the prompt is counted, `auto` moves to the level's next model when its context window cannot take the
prompt bound plus the output cap. A hold the pool or the allocation refuses (402) is retried at lower
power levels only when the request asked (`X-Power-Fallback: downgrade`) or its tier's policy says so:
one reserve per level, nearest first, in this same call (policies/fit.py); the answer names the level that
served it in `X-Power-Level-Served` (on every admitted request).

Settlement (policies/settlement.py) runs once, from `ctx.cleanup` (which the passthrough closes before it
sends a non-stream answer, so its headers carry the charge), shielded from cancellation; a renewal
timer checkpoints the hold meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal
from typing import Any

from policies.config import pinned
from policies.fit import AUTO, REFUSALS_DOWNGRADED, choose_auto, fits, lower_model
from policies.model import OUTPUT_CAPS, serve_at
from policies.settlement import IMAGES, Books, Record, Settle, requested, streamed
from proxy.config.catalogue import Catalogue, Model, Price
from proxy.config.live import Snapshot
from proxy.config.policy import PolicyConfig, Tier
from proxy.directory.scopes import narrow
from proxy.errors import ProxyError
from proxy.gateway.context import OutputMeter, RequestContext
from proxy.gateway.tokens import TokenCounter, bound, large_prompt, prompt_count
from proxy.ledger import tariffs
from proxy.ledger.spool import Spool
from proxy.ledger.types import Hold, HoldRequest, Ledger
from proxy.tasks import Background

log = logging.getLogger("creditgate.credits")
_RATES_KEPT = 4096  # rate pairs remembered (prices x tiers x levels, per configuration a reload swapped in)

Balances = Callable[[str, str], Awaitable[Mapping[str, Any]]]
"""`(org_id, user_id) -> the GET /v1/credits body` (PgLedger.credits): read before tokenizing a large
prompt, so an org that cannot pay is refused before the expensive work."""

LimitTokens = Callable[[RequestContext, int], Awaitable[None]]
"""`(ctx, tokens)`: reserve the request's token bound (prompt bound + output cap) against the rate limits
(RateLimit.reserve_tokens), or raise 429; called once the bound is known, before any money is held."""


class ReserveCredits:
    def __init__(
        self,
        ledger: Ledger,
        policy: PolicyConfig,
        catalogue: Catalogue,
        counter: TokenCounter,
        *,
        record: Record | None = None,
        on_overage: Callable[[str, int], None] | None = None,
        balances: Balances | None = None,
        limit_tokens: LimitTokens | None = None,
        retry_seconds: float = 15.0,
        checkpoint_seconds: float | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.ledger = ledger
        self.books = Books(ledger, policy.credits_per_usd, record=record, on_overage=on_overage,
                           retry_seconds=retry_seconds, spool=spool)
        self._config = Snapshot.of(policy, catalogue)  # for a request no PinConfig pinned
        self._counter = counter
        self._balances = balances
        self._limit_tokens = limit_tokens
        self._checkpoint_seconds = checkpoint_seconds or policy.hold_ttl_seconds / 3
        self._background = Background()
        self._rate_cache: dict[tuple[Price, Decimal, Decimal], tuple[tariffs.Rates, tariffs.Rates]] = {}

    async def __call__(self, ctx: RequestContext) -> None:
        member = ctx.require_membership()
        config = pinned(ctx, self._config)  # held here, settled by Settle at these same prices
        model = config.catalogue.get(ctx.model or "")
        org_tier = config.policy.tier(member.org_tier)
        tier = None if org_tier is None else narrow(org_tier, ctx.key)  # what a scoped key may choose from
        if model is None or tier is None:
            raise RuntimeError("RewriteModel must run before ReserveCredits")
        if not model.priced_for(ctx.route) and not ctx.byok:
            raise ProxyError.permission("model_not_priced", f"The model '{model.name}' has no price configured.")
        large = large_prompt(ctx.body)
        if large and not ctx.byok and self._balances is not None and not ctx.downgrade:
            # tokenizing megabytes costs CPU every tenant shares: first make sure the hold could fit at all
            # (not when a lower level may serve it: the reserve at each level decides)
            tariff = self.books.tariff(model.highest, tariffs.factor(tier.markup, ctx.multiplier),
                                       config.policy.credits_per_usd)
            await self._affordable(member.org_id, member.user_id, tariff.charge(*_bound_units(ctx)))
        ctx.prompt_tokens = await self._counter.prompt_tokens_async(ctx.route, ctx.body, large=large)
        if ctx.meter.chunks == 0:  # count streamed output with the same tokenizer as the prompt
            ctx.meter = OutputMeter(self._counter.count)
        model = _fit_window(ctx, config, tier, model)
        units = _bound_units(ctx)
        if self._limit_tokens is not None:
            await self._limit_tokens(ctx, units[0] + units[1])  # refused here, nothing is held
        try:
            factor = await self._hold(ctx, config, model, tier.markup)
        except ProxyError as refusal:
            if refusal.code not in REFUSALS_DOWNGRADED or not ctx.downgrade or ctx.byok:
                raise
            model, factor = await self._downgrade(ctx, config, tier, refusal)
        assert ctx.hold is not None
        ctx.response_headers["X-Credits-Held"] = str(ctx.hold.amount)
        if ctx.power_level is not None:
            ctx.response_headers["X-Power-Level-Served"] = ctx.power_level
        settle = Settle(self.books, ctx, model, factor)
        ctx.cleanup.push_async_callback(settle)
        # every request, not only streams: a non-stream answer may take longer than the hold's TTL
        # (upstream timeout 600 s vs 120 s), and an expired hold would free credit still being spent.
        # Pushed after the settle step, so it stops first.
        ctx.cleanup.callback(self._renew(ctx, ctx.hold))

    async def _hold(self, ctx: RequestContext, config: Snapshot, model: Model, markup: Decimal) -> Decimal:
        """Reserve the request's bound for `model` at ctx's multiplier; sets ctx.hold, returns the factor."""
        key, member = ctx.require_key(), ctx.require_membership()
        cpu = config.policy.credits_per_usd
        factor = tariffs.factor(markup, ctx.multiplier)
        units = _bound_units(ctx)
        ctx.output_bound = units[1]
        amount = 0 if ctx.byok else self.books.tariff(model.highest, factor, cpu).charge(*units)
        rates, listed = self._rates(model, Decimal(0) if ctx.byok else factor, cpu)
        request = HoldRequest(
            org_id=member.org_id,
            user_id=member.user_id,
            key_id=key.id,
            request_id=ctx.request_id,
            amount=amount,
            model=model.name,
            byok=ctx.byok,
            prompt_tokens=ctx.prompt_tokens,
            input_rate=rates.input,
            output_rate=rates.output,
            list_input_rate=listed.input,
            list_output_rate=listed.output,
            price_version=config.version,
            end_user=ctx.end_user,
            tags=ctx.tags,
            power_level=ctx.power_level,
        )
        ctx.hold = await self.ledger.reserve(request)  # a cancelled reserve leaves no hold (Ledger)
        return factor

    async def _downgrade(self, ctx: RequestContext, config: Snapshot, tier: Tier,
                         refusal: ProxyError) -> tuple[Model, Decimal]:
        """The hold did not fit at the asked level: one reserve at each lower level that can serve the
        request, nearest first (policies/fit.py). Returns the model and factor it was held at; the last
        refusal when none fits, with the request's level and model as they were asked."""
        policy = config.policy
        asked = policy.level(ctx.power_level or "")
        if asked is None or ctx.asked_model is None:
            raise refusal
        before = (ctx.power_level, ctx.model, ctx.multiplier, ctx.provider)
        tokens = _window_tokens(ctx)
        for level in policy.lower_levels(asked):
            model = lower_model(config.catalogue, asked, level, tier, ctx.route, ctx.asked_model, ctx.body, tokens)
            if model is None:
                continue
            try:
                serve_at(ctx, policy, level, model)
                return model, await self._hold(ctx, config, model, tier.markup)
            except ProxyError as exc:
                if exc.code in REFUSALS_DOWNGRADED:
                    refusal = exc
                elif exc.code != "invalid_value":  # a body the lower model cannot take: not this level
                    raise
        ctx.power_level, ctx.model, ctx.multiplier, ctx.provider = before
        raise refusal

    async def _affordable(self, org_id: str, user_id: str, floor: int) -> None:
        """402 when the pool or the allocation cannot cover `floor`, the hold without its prompt (which
        only adds to it): the refusal the reserve would give, without tokenizing first. A failed read
        decides nothing: the reserve does."""
        assert self._balances is not None
        try:
            credits = await self._balances(org_id, user_id)
        except Exception as exc:  # noqa: BLE001 - the reserve is authoritative and fails closed itself
            log.warning("balance pre-check skipped: %s", type(exc).__name__)
            return
        if credits["pool"]["available"] < floor:
            raise ProxyError.insufficient_credits(
                "org_pool_exhausted", f"The organization's credit pool cannot cover this request (at least {floor} "
                "millicredits would be held).")
        allocation = credits["allocation"]
        if allocation["limit"] is not None and allocation["available"] < floor:
            raise ProxyError.insufficient_credits(
                "user_allocation_exhausted", f"Your allocation in this organization cannot cover this request (at "
                f"least {floor} millicredits would be held).")

    def _rates(self, model: Model, factor: Decimal, cpu: Decimal) -> tuple[tariffs.Rates, tariffs.Rates]:
        """(charged, list) millicredit rates at the model's highest price; few distinct keys (prices x
        tiers x levels, per configuration), so they are computed once each."""
        key = (model.highest, factor, cpu)
        if key not in self._rate_cache:
            if len(self._rate_cache) >= _RATES_KEPT:  # reloads add prices: keep the cache bounded
                self._rate_cache.clear()
            self._rate_cache[key] = (
                tariffs.millicredit_rates(model.highest, cpu, factor),
                tariffs.millicredit_rates(model.highest, cpu),
            )
        return self._rate_cache[key]

    def _renew(self, ctx: RequestContext, hold: Hold) -> Callable[[], None]:
        """While the request runs, every hold_ttl/3 renew the hold and record what a stream has delivered,
        so a dead replica's hold settles from it (checkpoint) and a live one's never expires. A timer,
        not a task per request: most requests end long before the first checkpoint. Returns `stop`."""
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            nonlocal handle
            self._background.spawn(self._checkpoint(ctx, hold))
            handle = loop.call_later(self._checkpoint_seconds, fire)

        def stop() -> None:
            if handle is not None:
                handle.cancel()

        handle = loop.call_later(self._checkpoint_seconds, fire)
        return stop

    async def _checkpoint(self, ctx: RequestContext, hold: Hold) -> None:
        try:
            await self.ledger.checkpoint(hold.org_id, hold.request_id, streamed(ctx))
        except Exception as exc:  # a missed checkpoint only makes the sweeper's fallback older
            log.warning("checkpoint failed: %s", type(exc).__name__)



def _fit_window(ctx: RequestContext, config: Snapshot, tier: Tier, model: Model) -> Model:
    """`auto` once the prompt is counted: a model whose context window cannot take the prompt bound plus
    the output cap gives way to the level's next one that can, or 400 (policies/fit.py). Not for a
    member's own key (whose key pays was decided for this model) nor a continued conversation (its
    prompt bound is the window itself)."""
    tokens = _window_tokens(ctx)
    if ctx.asked_model != AUTO or ctx.byok or ctx.prompt_floor or fits(model, tokens):
        return model
    level = config.policy.level(ctx.power_level or "")
    if level is None:
        return model
    chosen = choose_auto(config.catalogue, level, tier, ctx.route, ctx.body, tokens)
    serve_at(ctx, config.policy, level, chosen)
    return chosen


def _window_tokens(ctx: RequestContext) -> int | None:
    """What one answer takes of a context window: the prompt bound plus the output cap (None: images)."""
    if ctx.route == IMAGES:
        return None
    caps = [ctx.body[name] for name in OUTPUT_CAPS if isinstance(ctx.body.get(name), int)]
    return max(bound(ctx.prompt_tokens), ctx.prompt_floor) + max(caps, default=0)


def _bound_units(ctx: RequestContext) -> tuple[int, int, int]:
    """The most (prompt tokens, completion tokens, images) this request can be billed for."""
    body = ctx.body
    if ctx.route == IMAGES:
        return 0, 0, requested(body, "n")
    # a continued conversation (/responses previous_response_id): at least the model's context window
    prompt = max(bound(ctx.prompt_tokens), ctx.prompt_floor)
    if ctx.route == "embeddings":
        return prompt, 0, 0
    caps = [body[name] for name in OUTPUT_CAPS if isinstance(body.get(name), int)]
    if not caps:  # RewriteModel injects max_tokens; without it the cost has no bound
        raise ProxyError.invalid_value("max_tokens", "max_tokens is required for this request.")
    outputs = max(requested(body, "n"), requested(body, "best_of")) * prompt_count(ctx.route, body)
    return prompt, max(caps) * outputs, 0
