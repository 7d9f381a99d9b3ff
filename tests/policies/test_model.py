"""RewriteModel with the shipped policy.yaml and litellm_config.yaml: levels, auto, caps, multipliers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from policies.model import RewriteModel
from proxy.config.catalogue import Catalogue
from proxy.config.policy import PolicyConfig
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext
from tests.policies.policy_support import make_ctx, member


def ctx_for(
    body: dict[str, Any],
    *,
    tier: str = "starter",
    level: str | None = None,
    route: str = "chat/completions",
    **headers: str,
) -> RequestContext:
    ctx = make_ctx(body, route=route, **headers)
    ctx.membership = member(tier=tier, power_level=level)
    return ctx


async def rewrite(policy: PolicyConfig, catalogue: Catalogue, ctx: RequestContext) -> RequestContext:
    await RewriteModel(policy, catalogue)(ctx)
    return ctx


async def refusal(
    policy: PolicyConfig, catalogue: Catalogue, ctx: RequestContext
) -> tuple[int, str | None, str]:
    with pytest.raises(ProxyError) as info:
        await RewriteModel(policy, catalogue)(ctx)
    return info.value.status, info.value.code, info.value.message


async def test_power_level_sources_and_precedence(policy: PolicyConfig, catalogue: Catalogue) -> None:
    body = {"model": "fake-small", "power_level": "precision"}
    # header beats body; the body field is removed either way
    ctx = await rewrite(policy, catalogue, ctx_for(body, level="eco", x_power_level="balanced"))
    assert ctx.power_level == "balanced" and "power_level" not in ctx.body
    ctx = await rewrite(policy, catalogue, ctx_for(body, level="eco"))
    assert ctx.power_level == "precision" and "power_level" not in ctx.body
    ctx = await rewrite(policy, catalogue, ctx_for({"model": "fake-small"}, level="eco"))
    assert ctx.power_level == "eco"  # the member's default
    ctx = await rewrite(policy, catalogue, ctx_for({"model": "fake-small"}))
    assert ctx.power_level == "balanced"  # the policy default
    ctx = await rewrite(policy, catalogue, ctx_for({"model": "fake-small"}, level="retired-level"))
    assert ctx.power_level == "balanced"  # a stale member default falls back to the policy default


async def test_unknown_power_level_is_400(policy: PolicyConfig, catalogue: Catalogue) -> None:
    status, code, message = await refusal(
        policy, catalogue, ctx_for({"model": "fake-small"}, x_power_level="turbo")
    )
    assert (status, code, message) == (
        400,
        "invalid_value",
        "Unknown power level 'turbo'; use one of eco, balanced, precision.",
    )
    status, code, _ = await refusal(policy, catalogue, ctx_for({"model": "fake-small", "power_level": 3}))
    assert (status, code) == (400, "invalid_value")


async def test_auto_picks_the_levels_cheapest_model_the_tier_allows(
    policy: PolicyConfig, catalogue: Catalogue
) -> None:
    # balanced lists fake-medium first, but fake-gpt-4o-mini's output price is lower (policies/fit.py)
    ctx = await rewrite(policy, catalogue, ctx_for({"model": "auto"}, x_power_level="balanced"))
    assert (ctx.model, ctx.body["model"], ctx.multiplier) == ("fake-gpt-4o-mini", "fake-gpt-4o-mini", Decimal("0.25"))
    ctx = await rewrite(policy, catalogue, ctx_for({"model": "auto"}, tier="free", x_power_level="balanced"))
    assert ctx.model == "fake-gpt-4o-mini"  # fake-medium is not in the free tier
    assert (ctx.provider, ctx.multiplier) == ("openai", Decimal("0.25"))
    status, code, _ = await refusal(
        policy, catalogue, ctx_for({"model": "auto"}, tier="free", x_power_level="precision")
    )
    assert (status, code) == (403, "model_not_allowed")


async def test_model_refusals(policy: PolicyConfig, catalogue: Catalogue) -> None:
    assert await refusal(policy, catalogue, ctx_for({})) == (
        400,
        "missing_field",
        "Missing required field: 'model'.",
    )
    assert (await refusal(policy, catalogue, ctx_for({"model": 7})))[:2] == (400, "invalid_value")
    assert await refusal(policy, catalogue, ctx_for({"model": "gpt-9"})) == (
        404,
        "model_not_found",
        "The model 'gpt-9' does not exist.",
    )
    assert await refusal(policy, catalogue, ctx_for({"model": "fake-large"}, tier="free")) == (
        403,
        "model_not_allowed",
        "Your organization's tier does not include 'fake-large'.",
    )
    assert await refusal(policy, catalogue, ctx_for({"model": "fake-small"}, tier="platinum")) == (
        403,
        "model_not_allowed",
        "Your organization's tier allows no models.",
    )
    assert await refusal(policy, catalogue, ctx_for({"model": "fake-embed"})) == (
        400,
        "invalid_value",
        "The model 'fake-embed' does not serve /chat/completions.",
    )


@pytest.mark.parametrize(
    ("level", "model", "multiplier"),
    [
        ("eco", "fake-small", "0.1"),
        ("eco", "fake-large", "1.0"),  # asking for a precision model at eco pays the precision multiplier
        ("precision", "mock-gpt", "0.1"),  # the highest level listing mock-gpt is eco
        ("balanced", "fake-multi", "0.25"),
        ("eco", "fake-multi", "0.25"),
        ("precision", "unpriced-model", "1"),  # listed nowhere
    ],
)
async def test_multiplier_rule(
    policy: PolicyConfig, catalogue: Catalogue, level: str, model: str, multiplier: str
) -> None:
    ctx = await rewrite(policy, catalogue, ctx_for({"model": model}, x_power_level=level))
    assert ctx.multiplier == Decimal(multiplier)


@pytest.mark.parametrize(
    ("level", "model", "sent", "expected"),
    [
        ("eco", "fake-small", {}, {"max_tokens": 2000}),  # injected so the hold is bounded
        ("eco", "fake-small", {"max_tokens": 50}, {"max_tokens": 50}),
        ("eco", "fake-small", {"max_tokens": 9000}, {"max_tokens": 2000}),
        ("eco", "fake-small", {"max_completion_tokens": 9000}, {"max_completion_tokens": 2000}),
        (
            "eco",
            "fake-small",
            {"max_tokens": 10, "max_completion_tokens": 9000},
            {"max_tokens": 10, "max_completion_tokens": 2000},
        ),
        ("eco", "fake-small", {"max_tokens": None}, {"max_tokens": 2000}),
        ("precision", "mock-gpt", {}, {"max_tokens": 4096}),  # the model's own max_output_tokens
        ("precision", "fake-large", {"max_tokens": 20000}, {"max_tokens": 16000}),
    ],
)
async def test_output_caps(
    policy: PolicyConfig,
    catalogue: Catalogue,
    level: str,
    model: str,
    sent: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    ctx = await rewrite(policy, catalogue, ctx_for({"model": model, **sent}, x_power_level=level))
    assert {k: v for k, v in ctx.body.items() if k.startswith("max_")} == expected


async def test_completions_route_is_capped_and_embeddings_are_not(
    policy: PolicyConfig, catalogue: Catalogue
) -> None:
    ctx = await rewrite(
        policy, catalogue, ctx_for({"model": "fake-small", "prompt": "x"}, route="completions")
    )
    assert ctx.body["max_tokens"] == 4000  # the requested level's cap (balanced), under fake-small's 8192
    ctx = await rewrite(policy, catalogue, ctx_for({"model": "fake-embed", "input": "x"}, route="embeddings"))
    assert ctx.body == {"model": "fake-embed", "input": "x"}


@pytest.mark.parametrize("field", ["n", "best_of", "max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True])
async def test_counts_must_be_positive_integers(
    policy: PolicyConfig, catalogue: Catalogue, field: str, value: object
) -> None:
    status, code, _ = await refusal(policy, catalogue, ctx_for({"model": "fake-small", field: value}))
    assert (status, code) == (400, "invalid_value")
