"""RewriteModel: the power level, the model LiteLLM is asked for, its multiplier and output caps."""

from __future__ import annotations

import logging
from typing import Any

from policies.config import pinned
from proxy.config.catalogue import Catalogue, Model
from proxy.config.live import Snapshot
from proxy.config.policy import PolicyConfig, PowerLevel, Tier
from proxy.errors import ProxyError
from proxy.gateway.body import positive_int
from proxy.gateway.context import RequestContext
from proxy.gateway.params import forwardable

log = logging.getLogger("creditgate.policies")

AUTO = "auto"
CAPPED_ROUTES = ("chat/completions", "completions")
OUTPUT_CAPS = ("max_tokens", "max_completion_tokens")


class RewriteModel:
    """Sets ctx.power_level, ctx.model (and body["model"]), ctx.multiplier and ctx.provider.

    The level comes from `X-Power-Level`, else the body's `power_level` (always removed: it never
    reaches LiteLLM), else the member's default, else the policy default; unknown -> 400. `auto` is the
    level's first model the org's tier allows. The level (and the model's own `max_output_tokens`)
    caps `max_tokens` / `max_completion_tokens`; when neither is sent, `max_tokens` is injected so the
    hold is bounded. `n` and `best_of` must be positive integers. The body keeps only what LiteLLM may
    receive for the model (proxy/gateway/params.py: the route's OpenAI parameters plus the policy file's
    `forward_params`); any other field is 400 `invalid_value`, before anything is held. A model serves the
    routes of its mode; one without a mode every route its prices bound (proxy/config/catalogue.py). The
    policy file and the catalogue are the request's pinned snapshot (policies/config.py).
    """

    def __init__(self, policy: PolicyConfig, catalogue: Catalogue) -> None:
        self._config = Snapshot.of(policy, catalogue)  # for a request no PinConfig pinned

    async def __call__(self, ctx: RequestContext) -> None:
        config = pinned(ctx, self._config)
        policy = config.policy
        member = ctx.require_membership()
        level = _level(ctx, policy, member.power_level)
        tier = policy.tier(member.org_tier)
        if tier is None:  # an operator's mistake: fail closed rather than guess a markup
            log.error("org %s has tier %r, which the policy file does not define", member.org_id, member.org_tier)
            raise ProxyError.permission("model_not_allowed", "Your organization's tier allows no models.")
        model = _model(ctx, config.catalogue, level, tier)
        ctx.forward_params = policy.forwarded(model.name)
        ctx.body = forwardable(ctx.route, ctx.body, ctx.forward_params)
        _check_counts(ctx.body)
        if ctx.route in CAPPED_ROUTES:
            _cap_output(ctx.body, min(level.max_tokens, model.max_output_tokens or level.max_tokens))
        ctx.power_level = level.name
        ctx.model = model.name
        ctx.body["model"] = model.name
        ctx.multiplier = policy.multiplier_for(level, model.name)
        ctx.provider = model.provider


def _level(ctx: RequestContext, policy: PolicyConfig, member_default: str | None) -> PowerLevel:
    from_body = ctx.body.pop("power_level", None)
    if from_body is not None and not isinstance(from_body, str):
        raise ProxyError.invalid_value("power_level", "power_level must be a string.")
    name = ctx.headers.get("x-power-level", "").strip() or from_body
    if name:
        level = policy.level(name.strip().lower())
        if level is None:
            names = ", ".join(lv.name for lv in policy.power_levels)
            raise ProxyError.invalid_value("power_level", f"Unknown power level '{name[:32]}'; use one of {names}.")
        return level
    if member_default:
        level = policy.level(member_default)
        if level is not None:
            return level
        log.warning("member default power level %r is not in the policy file", member_default)
    level = policy.level(policy.default_power_level)
    assert level is not None  # load_policy checked the default names a level
    return level


def _model(ctx: RequestContext, catalogue: Catalogue, level: PowerLevel, tier: Tier) -> Model:
    name = ctx.body.get("model")
    if name is None or name == "":
        raise ProxyError.missing_field("model")
    if not isinstance(name, str):
        raise ProxyError.invalid_value("model", "model must be a string.")
    if name == AUTO:
        for candidate in level.models:
            model = catalogue.get(candidate)
            if model is not None and model.serves(ctx.route) and tier.allows(candidate):
                return model
        raise ProxyError.permission(
            "model_not_allowed", f"No model of power level '{level.name}' is available to your organization."
        )
    model = catalogue.get(name)
    if model is None:
        raise ProxyError.not_found("model_not_found", f"The model '{name[:128]}' does not exist.")
    if not model.serves(ctx.route):
        raise ProxyError.invalid_value("model", f"The model '{name}' does not serve /{ctx.route}.")
    if not tier.allows(name):
        raise ProxyError.permission("model_not_allowed", f"Your organization's tier does not include '{name}'.")
    return model


def _check_counts(body: dict[str, Any]) -> None:
    for name in ("n", "best_of"):
        value = body.get(name)
        if value is not None and not positive_int(value):
            raise ProxyError.invalid_value(name, f"{name} must be a positive integer.")


def _cap_output(body: dict[str, Any], cap: int) -> None:
    """Clamp the output limits the client sent to `cap`; inject `max_tokens` when none was sent."""
    sent = False
    for name in OUTPUT_CAPS:
        value = body.get(name)
        if value is None:
            body.pop(name, None)
            continue
        if not positive_int(value):
            raise ProxyError.invalid_value(name, f"{name} must be a positive integer.")
        body[name] = min(value, cap)
        sent = True
    if not sent:
        body["max_tokens"] = cap
