"""RewriteModel: the power level, the model LiteLLM is asked for, its multiplier and output caps."""

from __future__ import annotations

import logging
from typing import Any

from policies.config import pinned
from policies.fit import AUTO, choose_auto, wants_downgrade
from proxy.config.catalogue import Catalogue, Model
from proxy.config.live import Snapshot
from proxy.config.policy import PolicyConfig, PowerLevel, Tier
from proxy.directory.scopes import check_model, narrow
from proxy.errors import ProxyError
from proxy.gateway.body import positive_int
from proxy.gateway.context import RequestContext
from proxy.gateway.params import forwardable

log = logging.getLogger("creditgate.policies")

CAPPED_ROUTES = ("chat/completions", "completions", "responses")
# every route's output caps (the allowlist lets through only the route's own: /responses has max_output_tokens)
OUTPUT_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_INJECTED_CAP = {"responses": "max_output_tokens"}  # the cap injected when none is sent; else max_tokens


class RewriteModel:
    """Sets ctx.power_level, ctx.model (and body["model"]), ctx.multiplier and ctx.provider.

    The level comes from `X-Power-Level`, else the body's `power_level` (always removed: it never reaches
    LiteLLM), else the member's default, else the policy default; unknown -> 400. `auto` is the level's
    cheapest model the org's tier allows that can take the request (policies/fit.py); `X-Power-Fallback` (or
    the tier's policy) sets ctx.downgrade for ReserveCredits. The level (and the model's own
    `max_output_tokens`) caps `max_tokens` / `max_completion_tokens`; when neither is sent, `max_tokens` is
    injected so the hold is bounded. `n` and `best_of` must be positive integers. The body keeps only what
    LiteLLM may receive for the model (proxy/gateway/params.py: the route's OpenAI parameters plus the policy
    file's `forward_params`); any other field is 400 `invalid_value`, before anything is held. A model serves
    the routes of its mode; one without a mode every route its prices bound (proxy/config/catalogue.py). The
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
        ctx.downgrade = wants_downgrade(ctx.headers, tier)
        model = _model(ctx, config.catalogue, level, narrow(tier, ctx.key))  # a scoped key narrows the tier
        serve_at(ctx, policy, level, model)


def serve_at(ctx: RequestContext, policy: PolicyConfig, level: PowerLevel, model: Model) -> None:
    """Rewrite the request for `model` at `level`: the body LiteLLM may receive for it, the level's output
    cap, the multiplier. Run again by ReserveCredits on a downgrade, or when `auto` moves to a model whose
    context window fits (policies/fit.py): an output cap already set only ever shrinks."""
    ctx.forward_params = policy.forwarded(model.name)
    ctx.body = forwardable(ctx.route, ctx.body, ctx.forward_params)
    _check_counts(ctx.body)
    if ctx.route in CAPPED_ROUTES:
        cap = min(level.max_tokens, model.max_output_tokens or level.max_tokens)
        _cap_output(ctx.body, cap, _INJECTED_CAP.get(ctx.route, "max_tokens"))
    if ctx.body.get("previous_response_id") is not None:
        ctx.prompt_floor = _context_window(model)
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
    ctx.asked_model = name
    if name == AUTO:  # cheapest first, fitting the task (policies/fit.py)
        return choose_auto(catalogue, level, tier, ctx.route, ctx.body)
    model = catalogue.get(name)
    if model is None:
        raise ProxyError.not_found("model_not_found", f"The model '{name[:128]}' does not exist.")
    if not model.serves(ctx.route):
        raise ProxyError.invalid_value("model", f"The model '{name}' does not serve /{ctx.route}.")
    check_model(ctx.key, name)
    if not tier.allows(name):
        raise ProxyError.permission("model_not_allowed", f"Your organization's tier does not include '{name}'.")
    return model


def _check_counts(body: dict[str, Any]) -> None:
    for name in ("n", "best_of"):
        value = body.get(name)
        if value is not None and not positive_int(value):
            raise ProxyError.invalid_value(name, f"{name} must be a positive integer.")


def _context_window(model: Model) -> int:
    """The prompt bound of a request that continues a stored conversation (`previous_response_id`): its
    body does not hold the prompt, but no deployment reads more than its context window. 400 when a
    deployment's window is unknown (the catalogue's `max_input_tokens`, from the config or LiteLLM's model
    info): such a request cannot be bounded."""
    windows = [d.max_input_tokens for d in model.deployments]
    if not windows or any(w is None or w <= 0 for w in windows):
        raise ProxyError.invalid_value(
            "previous_response_id", f"'previous_response_id' is not supported for '{model.name}': its context "
            "window is unknown, so the continued conversation cannot be bounded before it is sent.")
    return max(w for w in windows if w is not None)


def _cap_output(body: dict[str, Any], cap: int, injected: str = "max_tokens") -> None:
    """Clamp the output limits the client sent to `cap`; inject `injected` when none was sent."""
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
        body[injected] = cap
