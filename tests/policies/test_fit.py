"""policies/fit.py with RewriteModel and ReserveCredits: `auto` cheapest first among the models whose model
info supports the request (image inputs, tools, JSON schema output, a context window for the prompt bound
plus the output cap), and a refused hold retried at lower power levels only when asked. Expected holds and
charges come from the contract's formula over this file's own prices, with Fractions."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from policies.credits import ReserveCredits
from policies.fit import candidates, choose_auto, lower_model, needs, wants_downgrade
from policies.model import RewriteModel
from proxy.config.catalogue import Catalogue, Deployment, Model, Price
from proxy.config.policy import parse_policy
from proxy.directory.types import ApiKey
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext, Usage
from proxy.gateway.tokens import TokenCounter
from proxy.ledger.types import Hold, HoldRequest
from tests.fakes import FakeLedger
from tests.policies.policy_support import answered, make_ctx, member, prompt_bound, run

POLICY = parse_policy("""
credits_per_usd: 1000
default_power_level: balanced
power_levels:
  eco:       {multiplier: 0.1,  max_tokens: 100, models: [tiny, seer-small, dual]}
  balanced:  {multiplier: 0.25, max_tokens: 200, models: [wide, seer, dual, tooly, plain, twin]}
tiers:
  starter: {markup: 0.4, models: ["*"]}
  keen:    {markup: 0.0, models: ["*"], downgrade: true}
  limited: {markup: 0.0, models: [plain, tiny]}
""")
ALL = frozenset({"vision", "function_calling", "response_schema"})
# name -> (input, output USD per token, capabilities, context window)
SPECS: dict[str, tuple[str, str, frozenset[str], int | None]] = {
    "tiny": ("0.0000001", "0.0000002", frozenset(), None),
    "seer-small": ("0.0000002", "0.0000004", frozenset({"vision"}), None),
    "plain": ("0.000001", "0.000002", frozenset(), None),
    "twin": ("0.000001", "0.000002", frozenset(), None),  # plain's price, listed after it
    "tooly": ("0.000001", "0.000003", frozenset({"function_calling"}), None),
    "seer": ("0.000003", "0.000004", ALL, 10_000),
    "wide": ("0.000005", "0.000008", ALL, 100_000),
    "dual": ("0.000009", "0.000009", frozenset(), None),
}
MARKUP = {"starter": Fraction("0.4"), "keen": Fraction(0), "limited": Fraction(0)}
MULTIPLIER = {"eco": Fraction("0.1"), "balanced": Fraction("0.25")}
TEXT = [{"role": "user", "content": "Say hello."}]
IMAGE = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                      {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]


def deployment(name: str) -> Deployment:
    price_in, price_out, caps, window = SPECS[name]
    return Deployment(id=f"{name}-1", model_name=name, provider="openai",
                      price=Price(Decimal(price_in), Decimal(price_out)), byok="none", max_output_tokens=None,
                      mode="chat", max_input_tokens=window, capabilities=caps)


CATALOGUE = Catalogue({name: Model(name, (deployment(name),)) for name in SPECS})


def hold_of(model: str, prompt: int, completion: int, tier: str, level: str) -> int:
    price_in, price_out = Fraction(SPECS[model][0]), Fraction(SPECS[model][1])
    usd = prompt * price_in + completion * price_out
    return math.ceil(usd * 1000 * 1000 * (1 + MARKUP[tier]) * MULTIPLIER[level])


class TightLedger(FakeLedger):
    """Refuses (402, nothing held) every hold above `pool`, or above `allocation` when that is set."""

    def __init__(self, pool: int, allocation: int | None = None) -> None:
        super().__init__()
        self.pool_limit, self.allocation_limit = pool, allocation
        self.asked: list[HoldRequest] = []

    async def reserve(self, request: HoldRequest) -> Hold:
        self.asked.append(request)
        if request.amount > self.pool_limit:
            raise ProxyError.insufficient_credits("org_pool_exhausted", "pool")
        if self.allocation_limit is not None and request.amount > self.allocation_limit:
            raise ProxyError.insufficient_credits("user_allocation_exhausted", "allocation")
        return await super().reserve(request)


async def rewritten(body: dict[str, Any], *, tier: str = "starter", level: str = "balanced",
                    **headers: str) -> RequestContext:
    ctx = make_ctx(body, x_power_level=level, **headers)
    ctx.key = ApiKey("key_1", "usr_1", None, False)
    ctx.membership = member("org_a", tier=tier)
    await RewriteModel(POLICY, CATALOGUE)(ctx)
    return ctx


def reserve(ledger: FakeLedger, counter: TokenCounter) -> ReserveCredits:
    return ReserveCredits(ledger, POLICY, CATALOGUE, counter, retry_seconds=2.0)


async def refused(body: dict[str, Any], **kw: Any) -> tuple[int, str | None, str | None, str]:
    with pytest.raises(ProxyError) as caught:
        await rewritten(body, **kw)
    error = caught.value
    return error.status, error.code, error.param, error.message


# ------------------------------------------------------------------ what a request needs


def test_needs_reads_images_tools_and_json_schema_in_chat_and_responses_bodies() -> None:
    assert needs({"messages": TEXT}) == ()
    assert needs({"messages": IMAGE}) == ("vision",)
    assert needs({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}) == ("vision",)
    assert needs({"input": [{"type": "input_image", "image_url": "x"}]}) == ("vision",)
    assert needs({"input": "a string", "messages": "not a list"}) == ()
    assert needs({"tools": [{"type": "function"}]}) == ("function_calling",)
    assert needs({"functions": [{"name": "f"}], "tools": []}) == ("function_calling",)
    assert needs({"tools": []}) == ()
    assert needs({"response_format": {"type": "json_schema"}}) == ("response_schema",)
    assert needs({"response_format": {"type": "json_object"}}) == ()
    assert needs({"text": {"format": {"type": "json_schema"}}}) == ("response_schema",)
    assert needs({"messages": IMAGE, "tools": [{}], "response_format": {"type": "json_schema"}}) == (
        "vision", "function_calling", "response_schema")


def test_candidates_are_cheapest_first_by_output_then_input_ties_in_list_order() -> None:
    level = POLICY.level("balanced")
    tier = POLICY.tier("starter")
    assert level is not None and tier is not None
    names = [m.name for m in candidates(CATALOGUE, level, tier, "chat/completions")]
    assert names == ["plain", "twin", "tooly", "seer", "wide", "dual"]


# ------------------------------------------------------------------ auto in RewriteModel


@pytest.mark.parametrize(("body", "model"), [
    ({"messages": TEXT}, "plain"),
    ({"messages": TEXT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tooly"),
    ({"messages": IMAGE}, "seer"),
    ({"messages": IMAGE, "tools": [{"type": "function", "function": {"name": "f"}}],
      "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "seer"),
])
async def test_auto_takes_the_cheapest_model_that_supports_the_request(body: dict[str, Any], model: str) -> None:
    ctx = await rewritten({"model": "auto", **body})
    assert (ctx.model, ctx.body["model"], ctx.asked_model, ctx.power_level) == (model, model, "auto", "balanced")
    assert ctx.multiplier == Decimal("0.25") and ctx.body["max_tokens"] == 200


async def test_a_model_named_explicitly_is_not_checked_for_capabilities() -> None:
    ctx = await rewritten({"model": "plain", "messages": IMAGE})
    assert (ctx.model, ctx.asked_model) == ("plain", "plain")


async def test_no_model_that_supports_the_request_is_400_saying_why() -> None:
    assert await refused({"model": "auto", "messages": IMAGE}, tier="limited") == (
        400, "invalid_value", "model", "No balanced model available to your organization supports image inputs.")
    assert await refused({"model": "auto", "messages": IMAGE, "tools": [{"type": "function"}]}, level="eco") == (
        400, "invalid_value", "model",
        "No eco model available to your organization supports image inputs and tools (function calling).")


async def test_a_level_the_tier_allows_nothing_of_stays_403() -> None:
    policy = parse_policy("""
credits_per_usd: 1000
default_power_level: eco
power_levels:
  eco: {multiplier: 0.1, max_tokens: 100, models: [seer]}
tiers:
  limited: {markup: 0, models: [plain]}
""")
    level, tier = policy.level("eco"), policy.tier("limited")
    assert level is not None and tier is not None
    with pytest.raises(ProxyError) as caught:
        choose_auto(CATALOGUE, level, tier, "chat/completions", {"messages": TEXT})
    assert (caught.value.status, caught.value.code) == (403, "model_not_allowed")


async def test_the_context_window_must_take_the_prompt_bound_and_the_output_cap() -> None:
    level, tier = POLICY.level("balanced"), POLICY.tier("starter")
    assert level is not None and tier is not None
    body = {"messages": IMAGE}
    assert choose_auto(CATALOGUE, level, tier, "chat/completions", body, 10_000).name == "seer"
    assert choose_auto(CATALOGUE, level, tier, "chat/completions", body, 10_001).name == "wide"
    assert choose_auto(CATALOGUE, level, tier, "chat/completions", {"messages": TEXT}, 10**9).name == "plain"
    with pytest.raises(ProxyError) as caught:  # unknown windows fit: only the image need is left unmet
        choose_auto(CATALOGUE, level, tier, "chat/completions", body, 100_001)
    assert (caught.value.status, caught.value.param, caught.value.message) == (
        400, "model", "No balanced model available to your organization has a context window for this request "
        "(100001 tokens: the prompt and the output cap).")


async def test_reserve_moves_auto_to_a_model_whose_window_fits_the_counted_prompt(counter: TokenCounter) -> None:
    long = [{"role": "user", "content": [{"type": "text", "text": "word " * 5000},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    ctx = await rewritten({"model": "auto", "messages": long})
    assert ctx.model == "seer"  # before the prompt is counted
    ledger = FakeLedger()
    await run(reserve(ledger, counter), ctx, answered(Usage(700, 5)))
    bound = prompt_bound(counter.prompt_tokens("chat/completions", ctx.body))
    assert bound + 200 > 10_000  # seer's window
    assert (ctx.model, ctx.body["model"]) == ("wide", "wide")
    assert [h.amount for h in ledger.holds] == [hold_of("wide", bound, 200, "starter", "balanced")]
    assert ledger.settled[0][2].charge == hold_of("wide", 700, 5, "starter", "balanced")


# ------------------------------------------------------------------ X-Power-Fallback


def test_the_fallback_header_and_the_tiers_policy() -> None:
    starter, keen = POLICY.tier("starter"), POLICY.tier("keen")
    assert starter is not None and keen is not None
    assert (wants_downgrade({}, starter), wants_downgrade({}, keen)) == (False, True)
    assert wants_downgrade({"x-power-fallback": " Downgrade "}, starter) is True
    assert wants_downgrade({"x-power-fallback": "none"}, keen) is False
    assert wants_downgrade({"x-power-fallback": ""}, keen) is True
    for bad in ("yes", "downgrade,none", "eco"):
        with pytest.raises(ProxyError) as caught:
            wants_downgrade({"x-power-fallback": bad}, starter)
        assert (caught.value.status, caught.value.code, caught.value.param, caught.value.message) == (
            400, "invalid_value", "X-Power-Fallback", "X-Power-Fallback must be 'downgrade' or 'none'.")


async def test_a_bad_fallback_header_is_400_before_anything_is_held() -> None:
    assert await refused({"model": "auto", "messages": TEXT}, x_power_fallback="always") == (
        400, "invalid_value", "X-Power-Fallback", "X-Power-Fallback must be 'downgrade' or 'none'.")


def test_the_lower_levels_are_those_listed_before_nearest_first() -> None:
    three = parse_policy("""
credits_per_usd: 1000
default_power_level: b
power_levels:
  a: {multiplier: 0.1, max_tokens: 1, models: [x]}
  b: {multiplier: 0.2, max_tokens: 1, models: [x]}
  c: {multiplier: 0.3, max_tokens: 1, models: [x]}
tiers:
  t: {markup: 0, models: ["*"]}
""")
    levels = {lv.name: lv for lv in three.power_levels}
    assert [lv.name for lv in three.lower_levels(levels["c"])] == ["b", "a"]
    assert three.lower_levels(levels["a"]) == ()


def test_an_explicit_model_moves_only_to_a_lower_level_that_lists_it() -> None:
    eco, balanced, tier = POLICY.level("eco"), POLICY.level("balanced"), POLICY.tier("starter")
    assert eco is not None and balanced is not None and tier is not None
    model = lower_model(CATALOGUE, balanced, eco, tier, "chat/completions", "dual", {}, 10)
    assert model is not None and model.name == "dual"
    assert lower_model(CATALOGUE, balanced, eco, tier, "chat/completions", "plain", {}, 10) is None
    assert lower_model(CATALOGUE, eco, eco, tier, "chat/completions", "wide", {}, 10) is None
    image = {"messages": IMAGE}
    picked = lower_model(CATALOGUE, balanced, eco, tier, "chat/completions", "auto", image, 10)
    assert picked is not None and picked.name == "seer-small"


# ------------------------------------------------------------------ downgrade in ReserveCredits


def bounds(ctx: RequestContext, counter: TokenCounter) -> int:
    return prompt_bound(counter.prompt_tokens("chat/completions", ctx.body))


@pytest.mark.parametrize("code", ["org_pool_exhausted", "user_allocation_exhausted"])
async def test_downgrade_when_asked_holds_at_the_next_lower_level(counter: TokenCounter, code: str) -> None:
    ctx = await rewritten({"model": "auto", "messages": TEXT}, x_power_fallback="downgrade")
    prompt = bounds(ctx, counter)
    balanced = hold_of("plain", prompt, 200, "starter", "balanced")
    eco = hold_of("tiny", prompt, 100, "starter", "eco")
    assert eco < balanced
    ledger = TightLedger(eco) if code == "org_pool_exhausted" else TightLedger(10**9, allocation=eco)
    await run(reserve(ledger, counter), ctx, answered(Usage(9, 40)))
    assert [(r.model, r.amount) for r in ledger.asked] == [("plain", balanced), ("tiny", eco)]
    assert [(r.model, r.amount) for r in ledger.holds] == [("tiny", eco)]
    assert (ctx.power_level, ctx.model, ctx.body["model"], ctx.body["max_tokens"]) == ("eco", "tiny", "tiny", 100)
    assert ctx.multiplier == Decimal("0.1")
    assert ctx.response_headers["X-Power-Level-Served"] == "eco"
    assert ctx.response_headers["X-Credits-Held"] == str(eco)
    ((_, _, settlement),) = ledger.settled
    assert (settlement.model, settlement.charge) == ("tiny", hold_of("tiny", 9, 40, "starter", "eco"))


async def test_without_the_header_a_402_stays_a_402_and_nothing_is_held(counter: TokenCounter) -> None:
    for headers in ({}, {"x_power_fallback": "none"}):
        ctx = await rewritten({"model": "auto", "messages": TEXT}, **headers)
        ledger = TightLedger(1)
        with pytest.raises(ProxyError) as caught:
            await run(reserve(ledger, counter), ctx, answered(Usage(1, 1)))
        assert (caught.value.status, caught.value.code) == (402, "org_pool_exhausted")
        assert [r.model for r in ledger.asked] == ["plain"] and ledger.holds == [] and ledger.settled == []
        assert "X-Power-Level-Served" not in ctx.response_headers


async def test_the_tiers_policy_downgrades_and_the_header_none_refuses(counter: TokenCounter) -> None:
    ctx = await rewritten({"model": "auto", "messages": TEXT}, tier="keen")
    prompt = bounds(ctx, counter)
    ledger = TightLedger(hold_of("tiny", prompt, 100, "keen", "eco"))
    await run(reserve(ledger, counter), ctx, answered(Usage(1, 1)))
    assert (ctx.power_level, ctx.model) == ("eco", "tiny")
    ctx = await rewritten({"model": "auto", "messages": TEXT}, tier="keen", x_power_fallback="none")
    with pytest.raises(ProxyError) as caught:
        await run(reserve(TightLedger(hold_of("tiny", prompt, 100, "keen", "eco")), counter), ctx,
                  answered(Usage(1, 1)))
    assert caught.value.code == "org_pool_exhausted"


async def test_no_level_fits_the_lowest_refusal_is_returned_as_asked(counter: TokenCounter) -> None:
    ctx = await rewritten({"model": "auto", "messages": TEXT}, x_power_fallback="downgrade")
    ledger = TightLedger(0)
    with pytest.raises(ProxyError) as caught:
        await run(reserve(ledger, counter), ctx, answered(Usage(1, 1)))
    assert (caught.value.status, caught.value.code) == (402, "org_pool_exhausted")
    assert [r.model for r in ledger.asked] == ["plain", "tiny"] and ledger.holds == []
    assert (ctx.power_level, ctx.model, ctx.multiplier) == ("balanced", "plain", Decimal("0.25"))


async def test_downgrade_keeps_the_task_an_explicit_model_and_other_refusals(counter: TokenCounter) -> None:
    ctx = await rewritten({"model": "auto", "messages": IMAGE}, x_power_fallback="downgrade")
    prompt = bounds(ctx, counter)
    ledger = TightLedger(hold_of("seer-small", prompt, 100, "starter", "eco"))
    await run(reserve(ledger, counter), ctx, answered(Usage(1, 1)))
    assert [r.model for r in ledger.asked] == ["seer", "seer-small"]  # tiny has no vision
    assert (ctx.power_level, ctx.model) == ("eco", "seer-small")

    ctx = await rewritten({"model": "dual", "messages": TEXT}, x_power_fallback="downgrade")
    ledger = TightLedger(hold_of("dual", bounds(ctx, counter), 100, "starter", "eco"))
    await run(reserve(ledger, counter), ctx, answered(Usage(1, 1)))
    assert (ctx.power_level, ctx.model, ctx.multiplier) == ("eco", "dual", Decimal("0.1"))

    ctx = await rewritten({"model": "plain", "messages": TEXT}, x_power_fallback="downgrade")
    ledger = TightLedger(1)
    with pytest.raises(ProxyError):
        await run(reserve(ledger, counter), ctx, answered(Usage(1, 1)))
    assert [r.model for r in ledger.asked] == ["plain"]  # eco does not list plain: it never changes

    ctx = await rewritten({"model": "auto", "messages": TEXT}, x_power_fallback="downgrade")
    refusing = FakeLedger(reserve_error=ProxyError.permission("suspended", "suspended"))
    with pytest.raises(ProxyError) as caught:
        await run(reserve(refusing, counter), ctx, answered(Usage(1, 1)))
    assert caught.value.code == "suspended" and refusing.holds == []


async def test_every_admitted_request_says_its_level(counter: TokenCounter) -> None:
    ctx = await rewritten({"model": "auto", "messages": TEXT}, x_power_fallback="downgrade")
    await run(reserve(FakeLedger(), counter), ctx, answered(Usage(1, 1)))
    assert ctx.response_headers["X-Power-Level-Served"] == "balanced"
