"""Which model serves `auto` for this request, and whether a refused hold may move to a lower level.

`auto` is the first model of the power level, cheapest first, that the org's tier allows, that serves the
route, and whose model info supports what the request needs:

- the order: the catalogue's held price (the highest among a model's deployments), per token of output
  then of input (embeddings: input; images: per image); an unpriced price sorts after every priced one;
  ties keep the level's list order;
- image inputs (a content part of type `image_url` or `input_image`) need `supports_vision`; `tools` or
  `functions` need `supports_function_calling`; a `response_format` (chat) or `text.format` (responses)
  of type `json_schema` needs `supports_response_schema`. A model whose model info is silent does not
  support it, as LiteLLM's own `supports_*` checks answer; every deployment of a model must support it;
- once the prompt is counted (ReserveCredits), the prompt bound plus the output cap must fit the model's
  context window (`max_input_tokens`, the smallest among its deployments); a model whose window is
  unknown is assumed to fit (LiteLLM does not check either: the provider would refuse).

None fits: 400 `invalid_value` (param `model`) saying why. A model named explicitly is not checked: the
caller chose it.

Downgrade (`X-Power-Fallback: downgrade`, or the tier's `downgrade: true` in the policy file; `none`
refuses a downgrade the tier would allow): a hold refused for credit (402) is retried at the levels listed
before the asked one, nearest first, one reserve per level, in the same ReserveCredits call. `auto` takes
the lower level's pick; a model named explicitly moves only to a lower level that lists it too (the model
never changes under a caller who named it), and one the asked level does not list never moves. A lower
pick never takes a model whose deployments accept members' own keys (whose key pays was decided for the
first model) nor an unpriced one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from proxy.config.catalogue import Catalogue, Model
from proxy.config.policy import PowerLevel, Tier
from proxy.errors import ProxyError

AUTO = "auto"
VISION, TOOLS, SCHEMA = "vision", "function_calling", "response_schema"  # LiteLLM's `supports_*` names
_WORDS = {VISION: "image inputs", TOOLS: "tools (function calling)", SCHEMA: "JSON schema output"}
_IMAGE_PARTS = frozenset({"image_url", "input_image"})
REFUSALS_DOWNGRADED = frozenset({"org_pool_exhausted", "user_allocation_exhausted", "key_limit_exhausted"})
FALLBACK_HEADER = "x-power-fallback"


def needs(body: Mapping[str, Any]) -> tuple[str, ...]:
    """What the request needs of a model's capabilities (VISION, TOOLS, SCHEMA), in that order."""
    found: list[str] = []
    if _has_image(body.get("messages")) or _has_image(body.get("input")):
        found.append(VISION)
    if body.get("tools") or body.get("functions"):
        found.append(TOOLS)
    text = body.get("text")
    if _is_schema(body.get("response_format")) or (isinstance(text, Mapping) and _is_schema(text.get("format"))):
        found.append(SCHEMA)
    return tuple(found)


def _is_schema(value: object) -> bool:
    return isinstance(value, Mapping) and value.get("type") == "json_schema"


def _has_image(items: object) -> bool:
    """A chat message's or a Responses input item's content part of an image type (or the item itself)."""
    if not isinstance(items, list):
        return False
    for item in items:
        if not isinstance(item, Mapping):
            continue
        if item.get("type") in _IMAGE_PARTS:
            return True
        content = item.get("content")
        if isinstance(content, list) and any(isinstance(p, Mapping) and p.get("type") in _IMAGE_PARTS
                                             for p in content):
            return True
    return False


def _price_key(model: Model, route: str) -> tuple[tuple[bool, Decimal], ...]:
    price = model.highest
    if route == "embeddings":
        fields: tuple[Decimal | None, ...] = (price.input,)
    elif route == "images/generations":
        fields = (price.image,)
    else:
        fields = (price.output, price.input)
    return tuple((value is None, value if value is not None else Decimal(0)) for value in fields)


def candidates(catalogue: Catalogue, level: PowerLevel, tier: Tier, route: str) -> list[Model]:
    """The level's models the tier allows and that serve `route`, cheapest first (ties: list order)."""
    found = [m for name in dict.fromkeys(level.models)
             if (m := catalogue.get(name)) is not None and m.serves(route) and tier.allows(name)]
    return sorted(found, key=lambda m: _price_key(m, route))  # a stable sort keeps the list order of ties


def fits(model: Model, tokens: int | None) -> bool:
    """The prompt bound plus the output cap (`tokens`) fit its context window; unknown windows fit."""
    window = model.max_input_tokens
    return tokens is None or window is None or tokens <= window


def pick(models: Iterable[Model], wanted: Sequence[str], tokens: int | None = None) -> Model | None:
    return next((m for m in models if all(m.supports(n) for n in wanted) and fits(m, tokens)), None)


def choose_auto(catalogue: Catalogue, level: PowerLevel, tier: Tier, route: str, body: Mapping[str, Any],
                tokens: int | None = None) -> Model:
    """`auto`'s model at `level` (see the module); 403 when the tier allows none of the level's models,
    400 when none can take this request."""
    models = candidates(catalogue, level, tier, route)
    if not models:
        raise ProxyError.permission(
            "model_not_allowed", f"No model of power level '{level.name}' is available to your organization.")
    wanted = needs(body)
    model = pick(models, wanted)
    if model is None:
        what = " and ".join(_WORDS[n] for n in wanted)
        raise ProxyError.invalid_value("model", f"No {level.name} model available to your organization supports "
                                                f"{what}.")
    if not fits(model, tokens):
        model = pick(_switchable(models, model, route), wanted, tokens)
        if model is None:
            raise ProxyError.invalid_value(
                "model", f"No {level.name} model available to your organization has a context window for this "
                f"request ({tokens} tokens: the prompt and the output cap).")
    return model


def _switchable(models: Iterable[Model], first: Model, route: str) -> list[Model]:
    """Models a pick may move to once the chain has settled who pays the provider for `first`: the same
    one, or a priced one whose deployments take no member's key."""
    return [m for m in models
            if m is first or (not m.byok_allowed and not m.byok_required and m.priced_for(route))]


def wants_downgrade(headers: Mapping[str, str], tier: Tier) -> bool:
    """`X-Power-Fallback: downgrade` -> True, `none` -> False, absent or empty -> the tier's policy."""
    raw = headers.get(FALLBACK_HEADER, "").strip().lower()
    if not raw:
        return tier.downgrade
    if raw in ("downgrade", "none"):
        return raw == "downgrade"
    raise ProxyError.invalid_value("X-Power-Fallback", "X-Power-Fallback must be 'downgrade' or 'none'.")


def lower_model(catalogue: Catalogue, asked_level: PowerLevel, level: PowerLevel, tier: Tier, route: str,
                asked: str, body: Mapping[str, Any], tokens: int | None) -> Model | None:
    """The model serving the request at the lower `level`, or None when that level cannot (see the module)."""
    if asked != AUTO:
        if asked in asked_level.models and asked in level.models:
            return catalogue.get(asked)
        return None
    models = [m for m in candidates(catalogue, level, tier, route)
              if not m.byok_allowed and not m.byok_required and m.priced_for(route)]
    return pick(models, needs(body), tokens)
