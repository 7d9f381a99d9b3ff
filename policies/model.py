"""RewriteModel: the power level, the model LiteLLM is asked for, its multiplier and output caps."""

from __future__ import annotations

import logging
from typing import Any

from proxy.config.catalogue import Catalogue, Model
from proxy.config.policy import PolicyConfig, PowerLevel, Tier
from proxy.errors import ProxyError
from proxy.gateway.body import positive_int
from proxy.gateway.context import RequestContext
from proxy.gateway.params import forwardable

log = logging.getLogger("creditgate.policies")

AUTO = "auto"
# which LiteLLM `mode`s serve each route (a model without `mode` is a chat model)
ROUTE_MODES: dict[str, tuple[str, ...]] = {
    "chat/completions": ("chat", "completion", "responses"),
    "completions": ("chat", "completion"),
    "embeddings": ("embedding",),
    "images/generations": ("image_generation",),
}
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
    `forward_params`); any other field is 400 `invalid_value`, before anything is held.
    """

    def __init__(self, policy: PolicyConfig, catalogue: Catalogue) -> None:
        self._policy = policy
        self._catalogue = catalogue

    async def __call__(self, ctx: RequestContext) -> None:
        member = ctx.require_membership()
        level = self._level(ctx, member.power_level)
        tier = self._policy.tier(member.org_tier)
        if tier is None:  # an operator's mistake: fail closed rather than guess a markup
            log.error("org %s has tier %r, which the policy file does not define", member.org_id, member.org_tier)
            raise ProxyError.permission("model_not_allowed", "Your organization's tier allows no models.")
        model = self._model(ctx, level, tier)
        ctx.forward_params = self._policy.forwarded(model.name)
        ctx.body = forwardable(ctx.route, ctx.body, ctx.forward_params)
        _check_counts(ctx.body)
        if ctx.route in CAPPED_ROUTES:
            _cap_output(ctx.body, min(level.max_tokens, model.max_output_tokens or level.max_tokens))
        ctx.power_level = level.name
        ctx.model = model.name
        ctx.body["model"] = model.name
        ctx.multiplier = self._policy.multiplier_for(level, model.name)
        ctx.provider = model.provider

    def _level(self, ctx: RequestContext, member_default: str | None) -> PowerLevel:
        from_body = ctx.body.pop("power_level", None)
        if from_body is not None and not isinstance(from_body, str):
            raise ProxyError.invalid_value("power_level", "power_level must be a string.")
        name = ctx.headers.get("x-power-level", "").strip() or from_body
        if name:
            level = self._policy.level(name.strip().lower())
            if level is None:
                names = ", ".join(lv.name for lv in self._policy.power_levels)
                raise ProxyError.invalid_value("power_level", f"Unknown power level '{name[:32]}'; use one of {names}.")
            return level
        if member_default:
            level = self._policy.level(member_default)
            if level is not None:
                return level
            log.warning("member default power level %r is not in the policy file", member_default)
        level = self._policy.level(self._policy.default_power_level)
        assert level is not None  # load_policy checked the default names a level
        return level

    def _model(self, ctx: RequestContext, level: PowerLevel, tier: Tier) -> Model:
        name = ctx.body.get("model")
        if name is None or name == "":
            raise ProxyError.missing_field("model")
        if not isinstance(name, str):
            raise ProxyError.invalid_value("model", "model must be a string.")
        modes = ROUTE_MODES.get(ctx.route, ())
        if name == AUTO:
            for candidate in level.models:
                model = self._catalogue.get(candidate)
                if model is not None and model.mode in modes and tier.allows(candidate):
                    return model
            raise ProxyError.permission(
                "model_not_allowed", f"No model of power level '{level.name}' is available to your organization."
            )
        model = self._catalogue.get(name)
        if model is None:
            raise ProxyError.not_found("model_not_found", f"The model '{name[:128]}' does not exist.")
        if model.mode not in modes:
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
