"""ReserveCredits: the exact hold and charge per power level x tier, and settle / estimate / void on
every path, exactly once. Expected amounts are computed here from the contract's formula with
Fractions over the prices' text in litellm_config.yaml, independently of proxy/config/catalogue.py."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from proxy.config.catalogue import Catalogue
from proxy.config.policy import PolicyConfig
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext, Usage
from proxy.gateway.tokens import TokenCounter
from proxy.ledger.types import Settlement
from tests.fakes import FakeLedger
from tests.policies.policy_support import (
    MESSAGES,
    PRICES,
    admitted,
    answered,
    credits_for,
    expected,
    prompt_bound,
    run,
)

LEVEL_MODELS = {  # a model of each level that each tier may use
    ("eco", "free"): "fake-small", ("balanced", "free"): "fake-gpt-4o-mini", ("precision", "free"): "mock-gpt",
    ("eco", "paid"): "fake-small", ("balanced", "paid"): "fake-medium", ("precision", "paid"): "fake-large",
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tier", ["free", "starter", "professional", "enterprise"])
@pytest.mark.parametrize("level", ["eco", "balanced", "precision"])
async def test_exact_hold_and_charge_per_level_and_tier(
    policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, ledger: FakeLedger,
    level: str, tier: str, stream: bool,
) -> None:
    model = LEVEL_MODELS[(level, "free" if tier == "free" else "paid")]
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "stream": stream}
    ctx = await admitted(policy, catalogue, body, tier=tier, level=level)
    charged_level = "eco" if model == "mock-gpt" else level  # mock-gpt is an eco model
    cap = {"eco": 2000, "balanced": 4000, "precision": 4096 if model == "mock-gpt" else 16000}[level]
    counted = counter.prompt_tokens("chat/completions", ctx.body)
    await run(credits_for(ledger, policy, catalogue, counter), ctx, answered(Usage(17, 230)))

    hold = expected(PRICES[model], prompt_bound(counted), cap, tier, charged_level)
    charge = expected(PRICES[model], 17, 230, tier, charged_level)
    assert ledger.holds[0].amount == hold
    assert ctx.response_headers["X-Credits-Held"] == str(hold)
    ((org, rid, settlement),) = ledger.settled
    assert (org, rid) == ("org_a", "req_test")
    assert settlement == Settlement(17, 230, charge, expected(PRICES[model], 17, 230, "free", None), "provider",
                                    model, "openai", None)
    assert ledger.voided == []
    if not stream:
        assert ctx.response_headers["X-Credits-Charged"] == str(charge)
        assert ctx.response_headers["X-Credits-Remaining"] == "123456"


async def test_hold_request_carries_exact_rates(
    policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, ledger: FakeLedger
) -> None:
    ctx = await admitted(policy, catalogue, {"model": "fake-small", "messages": MESSAGES}, tier="starter", level="eco")
    await run(credits_for(ledger, policy, catalogue, counter), ctx, answered(Usage(1, 1)))
    request = ledger.holds[0]
    # 0.00000005 USD * 1e6 millicredits/USD * 1.4 * 0.1 = 0.007 millicredits per input token
    assert (request.input_rate, request.output_rate) == (Decimal("0.007"), Decimal("0.014"))
    assert (request.list_input_rate, request.list_output_rate) == (Decimal("0.05"), Decimal("0.1"))
    assert (request.org_id, request.user_id, request.key_id, request.model, request.byok) == (
        "org_a", "usr_1", "key_1", "fake-small", False)
    assert request.prompt_tokens == ctx.prompt_tokens == counter.prompt_tokens("chat/completions", ctx.body)
    assert (request.end_user, request.tags) == (None, ())


async def test_the_hold_carries_the_requests_end_user_and_tags(
    policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, ledger: FakeLedger
) -> None:
    """What the passthrough parsed with the body (proxy/gateway/attribution.py) is recorded on the hold."""
    ctx = await admitted(policy, catalogue, {"model": "fake-small", "messages": MESSAGES, "user": "customer-42"},
                         tier="starter", level="eco")
    ctx.end_user, ctx.tags = "customer-42", ("support", "beta")
    await run(credits_for(ledger, policy, catalogue, counter), ctx, answered(Usage(1, 1)))
    assert (ledger.holds[0].end_user, ledger.holds[0].tags) == ("customer-42", ("support", "beta"))
    assert ctx.body["user"] == "customer-42"  # still forwarded: `user` is on the route's OpenAI allowlist


async def test_n_best_of_and_prompt_lists_multiply_the_output_bound(
    policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, ledger: FakeLedger
) -> None:
    body = {"model": "fake-medium", "prompt": ["one", "two", "three"], "max_tokens": 100, "n": 2, "best_of": 4}
    ctx = await admitted(policy, catalogue, body, route="completions")
    await run(credits_for(ledger, policy, catalogue, counter), ctx, answered(Usage(3, 5)))
    counted = counter.prompt_tokens("completions", ctx.body)
    assert ledger.holds[0].amount == expected(PRICES["fake-medium"], prompt_bound(counted), 100 * 4 * 3,
                                              "starter", "balanced")


async def test_multi_deployment_held_at_highest_settled_at_answering_price(
    policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, ledger: FakeLedger
) -> None:
    credits = credits_for(ledger, policy, catalogue, counter)
    for deployment, priced_as in [("fake-multi-a", "fake-multi-a"), ("fake-multi-b", "fake-multi-b"),
                                  ("unknown-id", "fake-multi-b")]:
        ctx = await admitted(policy, catalogue, {"model": "fake-multi", "messages": MESSAGES, "max_tokens": 10})
        ctx.request_id = f"req_{deployment}"
        await run(credits, ctx, answered(Usage(1000, 500), deployment))
        counted = counter.prompt_tokens("chat/completions", ctx.body)
        assert ledger.holds[-1].amount == expected(PRICES["fake-multi-b"], prompt_bound(counted), 10,
                                                   "starter", "balanced")
        settlement = ledger.settled[-1][2]
        assert settlement.charge == expected(PRICES[priced_as], 1000, 500, "starter", "balanced")
        assert settlement.deployment == deployment


async def test_embeddings_and_images(
    policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, ledger: FakeLedger
) -> None:
    credits = credits_for(ledger, policy, catalogue, counter)
    ctx = await admitted(policy, catalogue, {"model": "fake-embed", "input": "hello world"}, route="embeddings")
    await run(credits, ctx, answered(Usage(2, 0)))
    assert ledger.holds[-1].amount == math.ceil((2 * 3 // 2 + 64) * Fraction("0.00000002") * 10**6 * Fraction("1.4"))
    assert ledger.settled[-1][2].charge == math.ceil(2 * Fraction("0.00000002") * 10**6 * Fraction("1.4"))

    ctx = await admitted(policy, catalogue, {"model": "fake-image", "prompt": "a cat", "n": 3},
                         route="images/generations", tier="enterprise")
    ctx.request_id = "req_image"

    async def images(ctx: RequestContext) -> None:
        ctx.upstream_status, ctx.image_count = 200, 2
        await ctx.cleanup.aclose()

    await run(credits, ctx, images)
    per_image = Fraction("0.04") * 10**6 * Fraction("1.8")  # multiplier 1: no level lists fake-image
    assert ledger.holds[-1].amount == math.ceil(3 * per_image)
    settlement = ledger.settled[-1][2]
    assert (settlement.charge, settlement.list_price) == (math.ceil(2 * per_image), 80_000)


async def test_byok_holds_zero_and_records_list_price(
    policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, ledger: FakeLedger
) -> None:
    ctx = await admitted(policy, catalogue, {"model": "byok-gpt", "messages": MESSAGES}, level="precision", byok=True)
    await run(credits_for(ledger, policy, catalogue, counter), ctx, answered(Usage(100, 200)))
    request = ledger.holds[0]
    assert (request.amount, request.byok, request.input_rate, request.output_rate) == (0, True, Decimal(0), Decimal(0))
    assert (request.list_input_rate, request.list_output_rate) == (Decimal("2.5"), Decimal(10))
    settlement = ledger.settled[0][2]
    assert (settlement.charge, settlement.list_price) == (0, 2250)  # 100 * 2.5 + 200 * 10 millicredits
    assert ctx.response_headers["X-Credits-Held"] == "0"


async def test_unpriced_model_refused_unless_byok(
    policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, ledger: FakeLedger
) -> None:
    credits = credits_for(ledger, policy, catalogue, counter)
    ctx = await admitted(policy, catalogue, {"model": "unpriced-model", "messages": MESSAGES})
    with pytest.raises(ProxyError) as info:
        await run(credits, ctx, answered(Usage(1, 1)))
    assert (info.value.status, info.value.code) == (403, "model_not_priced")
    assert ledger.holds == []
    ctx = await admitted(policy, catalogue, {"model": "unpriced-model", "messages": MESSAGES}, byok=True)
    await run(credits, ctx, answered(Usage(5, 5)))
    assert ledger.holds[0].amount == 0
    assert (ledger.settled[0][2].charge, ledger.settled[0][2].list_price) == (0, 0)


async def test_ledger_refusal_leaves_nothing_to_settle(
    policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, ledger: FakeLedger
) -> None:
    ledger.reserve_error = ProxyError.insufficient_credits("org_pool_exhausted", "The pool is empty.")
    ctx = await admitted(policy, catalogue, {"model": "fake-small", "messages": MESSAGES})
    with pytest.raises(ProxyError) as info:
        await run(credits_for(ledger, policy, catalogue, counter), ctx, answered(Usage(1, 1)))
    assert info.value.code == "org_pool_exhausted"
    assert (ctx.hold, ledger.settled, ledger.voided) == (None, [], [])


class CountingCounter(TokenCounter):
    """A real counter that remembers how often it was asked to count a prompt."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts = 0

    def prompt_tokens(self, route: str, body: dict[str, Any]) -> int:
        self.prompts += 1
        return super().prompt_tokens(route, body)


def balances(pool: int, allocation: int | None) -> Any:
    seen: list[tuple[str, str]] = []

    async def read(org_id: str, user_id: str) -> dict[str, Any]:
        seen.append((org_id, user_id))
        return {"pool": {"available": pool},
                "allocation": {"limit": allocation, "available": allocation if allocation is not None else pool}}

    read.seen = seen  # type: ignore[attr-defined]
    return read


@pytest.mark.parametrize(("pool", "allocation", "code"), [
    (0, None, "org_pool_exhausted"), (10**9, 5, "user_allocation_exhausted"),
])
async def test_a_large_prompt_is_not_counted_when_the_output_alone_cannot_be_paid(
    policy: PolicyConfig, catalogue: Catalogue, ledger: FakeLedger, pool: int, allocation: int | None, code: str,
) -> None:
    counter = CountingCounter()
    body: dict[str, Any] = {"model": "fake-medium", "messages": [{"role": "user", "content": "w " * 40_000}]}
    ctx = await admitted(policy, catalogue, body)
    read = balances(pool, allocation)
    with pytest.raises(ProxyError) as info:
        await run(credits_for(ledger, policy, catalogue, counter, balances=read), ctx, answered(Usage(1, 1)))
    assert (info.value.status, info.value.code) == (402, code)
    assert counter.prompts == 0 and ledger.holds == [] and read.seen == [("org_a", "usr_1")]


async def test_small_prompts_skip_the_balance_read_and_affordable_large_ones_are_held(
    policy: PolicyConfig, catalogue: Catalogue, ledger: FakeLedger,
) -> None:
    counter, read = CountingCounter(), balances(10**9, None)
    small = await admitted(policy, catalogue, {"model": "fake-medium", "messages": MESSAGES})
    await run(credits_for(ledger, policy, catalogue, counter, balances=read), small, answered(Usage(1, 1)))
    assert read.seen == [] and counter.prompts == 1
    large = await admitted(policy, catalogue, {"model": "fake-medium",
                                               "messages": [{"role": "user", "content": "w " * 40_000}]})
    await run(credits_for(ledger, policy, catalogue, counter, balances=read), large, answered(Usage(1, 1)))
    assert read.seen == [("org_a", "usr_1")] and counter.prompts == 2 and len(ledger.holds) == 2


async def test_a_charge_above_its_hold_is_reported_as_overage(
    policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, ledger: FakeLedger,
) -> None:
    overages: list[tuple[str, int]] = []
    ctx = await admitted(policy, catalogue, {"model": "fake-medium", "messages": MESSAGES, "max_tokens": 10})
    credits = credits_for(ledger, policy, catalogue, counter, on_overage=lambda m, a: overages.append((m, a)))
    await run(credits, ctx, answered(Usage(10, 100_000)))  # a provider that ignored the cap
    ((_, _, settlement),) = ledger.settled
    hold = ledger.holds[0].amount
    assert overages == [("fake-medium", settlement.charge - hold)] and settlement.charge > hold
