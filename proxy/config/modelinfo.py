"""What LiteLLM knows about the deployments it serves: `GET /model/info` (master key), read exactly.

LiteLLM 1.106.2 answers `{"data": [row, ...]}`, one row per deployment of its router (config order), each
`{"model_name", "litellm_params" (without api keys), "model_info"}`. `model_info` carries the config's own
values merged with LiteLLM's cost map: `mode`, `input_cost_per_token`, `output_cost_per_token`,
`output_cost_per_image`, `max_input_tokens`, `max_output_tokens` and `supports_*` flags, and `id` (the
config's `model_info.id`, else a hash; the `x-litellm-model-id` of answers). A wildcard deployment
(`model_name: "anthropic/*"`) is expanded into one row per model of its provider that the cost map knows,
every row keeping the wildcard deployment's id (litellm/proxy/auth/model_checks.py,
`expand_wildcard_deployments_for_model_info`; research/litellm-captures/29_model_info.txt).

Prices are parsed from the JSON text as `Decimal`s (`parse_float=Decimal`), never through binary floats:
LiteLLM writes Python's shortest float repr, so `1.5e-07` is read as exactly 0.00000015.

The pattern rules below are LiteLLM's router's (litellm/router_utils/pattern_match_deployments.py): a
client name is routed to the deployments of the most specific wildcard pattern it matches, and only when
no deployment carries that exact name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from proxy.config.policy import as_decimal

PRICE_FIELDS = ("input_cost_per_token", "output_cost_per_token", "output_cost_per_image")
_COMPLEXITY = ("*", "+", "?", "\\", "^", "$", "|", "(", ")")


class ModelInfoError(ValueError):
    """LiteLLM's answer is not the model info this module understands (one line, no secrets)."""


@dataclass(frozen=True, slots=True)
class InfoRow:
    """One row of `/model/info`: a deployment, or one model a wildcard deployment expands to."""

    model_name: str
    target: str  # litellm_params.model
    id: str  # model_info.id: x-litellm-model-id
    prices: tuple[Decimal | None, Decimal | None, Decimal | None]  # PRICE_FIELDS, None = not known
    mode: str | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    capabilities: frozenset[str] = frozenset()  # the true `supports_*` flags, without the prefix


def parse_model_info(raw: bytes | str) -> tuple[InfoRow, ...]:
    """The rows of a `/model/info` answer; `ModelInfoError` when its shape is not LiteLLM's. A row whose
    price is not a non-negative number has that price unknown (the model stays unpriced: fail closed)."""
    try:
        data = json.loads(raw, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelInfoError(f"model info is not JSON: {str(exc)[:80]}") from None
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ModelInfoError("model info has no `data` list")
    return tuple(row for row in (_row(item) for item in rows) if row is not None)


def _row(item: Any) -> InfoRow | None:
    if not isinstance(item, Mapping):
        return None
    params, info = item.get("litellm_params"), item.get("model_info")
    if not isinstance(params, Mapping) or not isinstance(info, Mapping):
        return None
    name, target, ident = item.get("model_name"), params.get("model"), info.get("id")
    if not all(isinstance(v, str) and v for v in (name, target, ident)):
        return None
    prices = tuple(_price(info.get(key)) for key in PRICE_FIELDS)
    mode = info.get("mode")
    return InfoRow(
        model_name=str(name), target=str(target), id=str(ident), prices=(prices[0], prices[1], prices[2]),
        mode=mode if isinstance(mode, str) and mode else None,
        max_input_tokens=_count(info.get("max_input_tokens")), max_output_tokens=_count(info.get("max_output_tokens")),
        capabilities=frozenset(k.removeprefix("supports_") for k, v in info.items()
                               if isinstance(k, str) and k.startswith("supports_") and v is True),
    )


def _price(value: object) -> Decimal | None:
    price = as_decimal(value)
    return price if price is not None and price >= 0 else None


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# ------------------------------------------------------------------ LiteLLM's wildcard routing


def is_wildcard(name: str) -> bool:
    return "*" in name


def pattern_regex(pattern: str) -> str:
    """LiteLLM's `PatternMatchRouter.pattern_to_regex`: every `*` is a group, the rest literal."""
    return re.escape(pattern).replace(r"\*", "(.*)")


def by_specificity(patterns: Iterable[str]) -> list[str]:
    """Regexes in the order LiteLLM tries them: longest first, then the most regex characters; a stable
    sort, so equal ones keep the config's order (`PatternUtils.sorted_patterns`)."""
    return sorted(dict.fromkeys(patterns),
                  key=lambda r: (len(r), sum(r.count(c) for c in _COMPLEXITY)), reverse=True)


def first_match(regexes: Sequence[str], name: str) -> str | None:
    """The regex LiteLLM routes `name` by (`re.match`: anchored at the start only, as LiteLLM does)."""
    return next((r for r in regexes if re.match(r, name)), None)


def client_name(model_name: str, target: str, row: InfoRow) -> str | None:
    """The name a client sends to reach `row`, a model that the wildcard deployment (`model_name` ->
    `target`) was expanded to. LiteLLM lists expanded rows under provider names ("anthropic/claude-x" for
    `claude-*` -> `anthropic/claude-*`); the router fills the target's wildcards with what the client
    name's wildcards matched, so the client name is the reverse: the target's groups put into the
    pattern. A row whose own name already fits the pattern (a custom prefix, `llmengine/*` ->
    `openai/*`) is listed under its client name. None when neither fits."""
    stars = model_name.count("*")
    if is_wildcard(target) and target.count("*") == stars:
        found = re.fullmatch(pattern_regex(target), row.target)
        if found is not None:
            parts = iter(found.groups())
            return re.sub(r"\*", lambda _: next(parts), model_name)
    if re.fullmatch(pattern_regex(model_name), row.model_name):
        return row.model_name
    return None
