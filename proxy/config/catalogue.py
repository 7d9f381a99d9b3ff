"""Models, deployments and prices: the LiteLLM config, completed by LiteLLM's own model info.

`parse_entries` reads `model_list` as the operator wrote it: per deployment the model name, the
provider (`custom_llm_provider`, else the prefix of `litellm_params.model`), prices in USD from
`litellm_params` else `model_info`, `model_info.byok`, `max_output_tokens`, `mode` and `id`.
`build_catalogue(entries, info)` completes what the config does not say from `GET /model/info`
(proxy/config/modelinfo.py): the config's own values first, field by field, each price recording where
it came from (`config` | `litellm_model_info`). Wildcard deployments (`model_name: "anthropic/*"`) serve
the models LiteLLM expands them to, each priced on its own; a name that only matches a wildcard (not
expanded) is served by the pattern's deployments with the config's prices alone, as LiteLLM's router
would route it. A name is held at the highest price among its deployments and settled at the price of
the deployment that answered (an unknown one: the highest). A model neither the config nor LiteLLM can
price stays unpriced (403 `model_not_priced`).

Prices are exact Decimals from their YAML or JSON text, never binary floats (CONTRACT.md, Money).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from proxy.config.modelinfo import (
    PRICE_FIELDS,
    InfoRow,
    by_specificity,
    client_name,
    first_match,
    is_wildcard,
    pattern_regex,
)
from proxy.config.modellist import Entry, parse_entries
from proxy.config.modellist import Price as Price  # the catalogue's price type, re-exported
from proxy.config.policy import PolicyConfig, read_config
from proxy.config.settings import ConfigError

CONFIG, MODEL_INFO = "config", "litellm_model_info"  # where a price came from
# which LiteLLM `mode`s serve each billed route; a model without a mode serves every route its prices bound
ROUTE_MODES: dict[str, tuple[str, ...]] = {
    "chat/completions": ("chat", "completion", "responses"),
    "completions": ("chat", "completion"),
    "embeddings": ("embedding",),
    "images/generations": ("image_generation",),
    "responses": ("chat", "responses"),  # LiteLLM bridges a chat model's /responses to chat completions
}
_PATTERN_CACHE = 1024  # names matched to a wildcard route, remembered (bounded: clients choose names)


@dataclass(frozen=True, slots=True)
class Deployment:
    id: str
    model_name: str
    provider: str
    price: Price
    byok: str  # "none" | "optional" | "required"
    max_output_tokens: int | None
    mode: str | None  # "chat" | "completion" | "embedding" | "image_generation" | ...; None = not said
    sources: tuple[tuple[str, str], ...] = ()  # (price field, CONFIG | MODEL_INFO) for each known price
    max_input_tokens: int | None = None
    capabilities: frozenset[str] = frozenset()  # LiteLLM's true `supports_*` flags ("vision", ...)


@dataclass(frozen=True, slots=True)
class Model:
    """One model name and the deployments that serve it."""

    name: str
    deployments: tuple[Deployment, ...]
    highest: Price = field(init=False)
    """Component-wise highest price: an upper bound whichever deployment answers."""

    def __post_init__(self) -> None:
        def top(values: list[Decimal | None]) -> Decimal | None:
            return None if any(v is None for v in values) else max(v for v in values if v is not None)

        ds = self.deployments
        highest = Price(
            top([d.price.input for d in ds]), top([d.price.output for d in ds]), top([d.price.image for d in ds])
        )
        object.__setattr__(self, "highest", highest)  # computed once: it is read on every request

    @property
    def mode(self) -> str | None:
        return self.deployments[0].mode

    @property
    def provider(self) -> str:
        return self.deployments[0].provider

    @property
    def single_provider(self) -> bool:
        return len({d.provider for d in self.deployments}) == 1

    @property
    def byok_allowed(self) -> bool:
        """Every deployment takes a member's key: otherwise LiteLLM could route the key elsewhere."""
        return self.single_provider and all(d.byok in ("optional", "required") for d in self.deployments)

    @property
    def byok_required(self) -> bool:
        return any(d.byok == "required" for d in self.deployments)

    @property
    def max_output_tokens(self) -> int | None:
        caps = [d.max_output_tokens for d in self.deployments if d.max_output_tokens is not None]
        return min(caps) if caps else None

    @property
    def max_input_tokens(self) -> int | None:
        """The smallest context window among its deployments that say one (LiteLLM may route to any);
        None when none says."""
        windows = [d.max_input_tokens for d in self.deployments if d.max_input_tokens is not None]
        return min(windows) if windows else None

    def supports(self, capability: str) -> bool:
        """Every deployment's model info says `supports_<capability>: true` (LiteLLM may route to any). A
        deployment whose model info is silent does not support it: LiteLLM's own `supports_*` checks
        answer False for what its model info does not say."""
        return all(capability in d.capabilities for d in self.deployments)

    def price_for(self, deployment_id: str | None) -> Price:
        """The answering deployment's price; unknown or missing -> the highest."""
        for d in self.deployments:
            if d.id == deployment_id:
                return d.price
        return self.highest

    def deployment(self, deployment_id: str | None) -> Deployment | None:
        return next((d for d in self.deployments if d.id == deployment_id), None)

    def priced_for(self, route: str) -> bool:
        """True when a charge on `route` can be bounded from every deployment's price."""
        price = self.highest
        if route == "embeddings":
            return price.input is not None
        if route == "images/generations":
            return price.image is not None
        return price.input is not None and price.output is not None

    def serves(self, route: str) -> bool:
        """Its mode serves `route`; without a mode (as in LiteLLM, optional), every route it can price. A
        model priced for no route at all is a chat model (LiteLLM's default), refused as not priced unless
        the member brings their own key."""
        mode = self.mode
        if mode is None:
            if any(self.priced_for(r) for r in ROUTE_MODES):
                return self.priced_for(route)
            mode = "chat"
        return mode in ROUTE_MODES.get(route, ())

    def priced(self) -> bool:
        """True when some route it serves can be charged (its mode's, or any without a mode)."""
        return any(self.serves(route) and self.priced_for(route) for route in ROUTE_MODES)


@dataclass(frozen=True, slots=True)
class _Pattern:
    """A wildcard model name and the deployments LiteLLM routes matching names to."""

    regex: str
    entries: tuple[tuple[Entry, str | None], ...]  # with LiteLLM's id of the deployment, when model info listed it


@dataclass(frozen=True, slots=True)
class Catalogue:
    """`models` are the exact names and the wildcard expansions; `get` also routes other names through the
    wildcard patterns. `complete` is False while model info is still needed (a wildcard, or a deployment
    the config does not price) and has not been read yet; `missing` names the deployments that needed it
    and that the model info read did not list (LiteLLM serving another config, or still reloading)."""

    models: Mapping[str, Model]
    patterns: tuple[_Pattern, ...] = ()
    complete: bool = True
    with_model_info: bool = False
    missing: tuple[str, ...] = ()
    _matched: dict[str, Model | None] = field(default_factory=dict, compare=False, repr=False)

    def providers(self) -> set[str]:
        """Every provider a deployment names (the wildcard routes' included)."""
        found = {d.provider for m in self.models.values() for d in m.deployments}
        return found | {e.provider for p in self.patterns for e, _ in p.entries}

    def get(self, name: str) -> Model | None:
        model = self.models.get(name)
        if model is not None or not self.patterns:
            return model
        if name not in self._matched:
            if len(self._matched) >= _PATTERN_CACHE:
                self._matched.clear()
            self._matched[name] = self._route(name)
        return self._matched[name]

    def _route(self, name: str) -> Model | None:
        regex = first_match([p.regex for p in self.patterns], name)
        pattern = next((p for p in self.patterns if p.regex == regex), None)
        if pattern is None:
            return None
        return Model(name, tuple(_merge(entry, name, None, ident) for entry, ident in pattern.entries))


def load_catalogue(path: Path, info: Sequence[InfoRow] | None = None) -> Catalogue:
    """Read the LiteLLM config's `model_list` (completed by `info`); `ConfigError` names each mistake."""
    return parse_catalogue(read_config(path, "CREDITGATE_LITELLM_CONFIG"), source=str(path), info=info)


def parse_catalogue(text: str, *, source: str = "LiteLLM config", info: Sequence[InfoRow] | None = None) -> Catalogue:
    return build_catalogue(parse_entries(text, source=source), info)


def build_catalogue(entries: Sequence[Entry], info: Sequence[InfoRow] | None = None) -> Catalogue:
    """The catalogue of `entries`, each completed by its model info rows when `info` is given."""
    rows = _rows_by_entry(entries, info or ())
    grouped: dict[str, list[Deployment]] = {}
    for entry in entries:
        if not entry.wildcard:
            grouped.setdefault(entry.model_name, []).append(_merge(entry, entry.model_name, _first(rows[entry.index])))
    regexes = by_specificity(pattern_regex(e.model_name) for e in entries if e.wildcard)
    patterns = tuple(
        _Pattern(r, tuple((e, _ident(rows[e.index])) for e in entries
                          if e.wildcard and pattern_regex(e.model_name) == r))
        for r in regexes)
    expanded: dict[str, dict[int, InfoRow]] = {}
    for entry in (e for e in entries if e.wildcard):
        for row in rows[entry.index]:
            name = None if is_wildcard(row.target) else client_name(entry.model_name, entry.target, row)
            if name is not None and name not in grouped:
                expanded.setdefault(name, {}).setdefault(entry.index, row)
    models = {name: Model(name, tuple(ds)) for name, ds in grouped.items()}
    for name, found in expanded.items():
        winner = next((p for p in patterns if p.regex == first_match(regexes, name)), None)
        if winner is not None:  # the deployments LiteLLM routes this name to, each with its own row
            models[name] = Model(name, tuple(_merge(e, name, found.get(e.index), ident) for e, ident in winner.entries))
    needing = [e for e in entries if _needs_model_info(e)]
    missing = tuple(e.model_name for e in needing if info is not None and not rows[e.index])
    return Catalogue(models, patterns, complete=info is not None or not needing, with_model_info=info is not None,
                     missing=missing)


def _first(rows: Sequence[InfoRow]) -> InfoRow | None:
    return rows[0] if rows else None


def _ident(rows: Sequence[InfoRow]) -> str | None:
    return rows[0].id if rows else None


def _rows_by_entry(entries: Sequence[Entry], info: Sequence[InfoRow]) -> dict[int, tuple[InfoRow, ...]]:
    """Each entry's rows of model info: by its `model_info.id` when the config names one; else the first
    deployment not yet claimed whose rows fit the entry (same name and target; for a wildcard, targets its
    target pattern matches), in config order as LiteLLM lists them."""
    by_id: dict[str, list[InfoRow]] = {}
    for row in info:
        by_id.setdefault(row.id, []).append(row)
    named = {e.id for e in entries if e.id is not None}
    claimed: set[str] = set()
    found: dict[int, tuple[InfoRow, ...]] = {}
    for entry in entries:
        if entry.id is not None:
            candidates = [entry.id] if entry.id in by_id else []
        else:
            candidates = [i for i, rs in by_id.items() if i not in claimed and i not in named and _fits(entry, rs)]
        found[entry.index] = tuple(by_id[candidates[0]]) if candidates else ()
        claimed.update(candidates[:1])
    return found


def _fits(entry: Entry, rows: Sequence[InfoRow]) -> bool:
    if not entry.wildcard:
        return len(rows) == 1 and (rows[0].model_name, rows[0].target) == (entry.model_name, entry.target)
    target = pattern_regex(entry.target) if is_wildcard(entry.target) else re.escape(entry.target)
    name = pattern_regex(entry.model_name)
    return all(re.fullmatch(target, r.target) or re.fullmatch(name, r.model_name) or r.target == entry.target
               for r in rows)


def _merge(entry: Entry, name: str, row: InfoRow | None, ident: str | None = None) -> Deployment:
    """The entry's deployment serving `name`: the config's values first, then the row's. Its id is the
    config's, else LiteLLM's (`ident`: a wildcard's rows share their deployment's), else a local name."""
    ours = (entry.price.input, entry.price.output, entry.price.image)
    theirs = row.prices if row is not None else (None, None, None)
    prices, sources = [], []
    for key, own, known in zip(PRICE_FIELDS, ours, theirs, strict=True):
        prices.append(own if own is not None else known)
        if own is not None or known is not None:
            sources.append((key, CONFIG if own is not None else MODEL_INFO))
    return Deployment(
        id=entry.id or (row.id if row is not None else ident) or f"{entry.model_name}#model_list[{entry.index}]",
        model_name=name,
        provider=entry.provider,
        price=Price(prices[0], prices[1], prices[2]),
        byok=entry.byok,
        max_output_tokens=entry.max_output_tokens or (row.max_output_tokens if row is not None else None),
        mode=entry.mode or (row.mode if row is not None else None),
        sources=tuple(sources),
        max_input_tokens=row.max_input_tokens if row is not None else None,
        capabilities=row.capabilities if row is not None else frozenset(),
    )


def _needs_model_info(entry: Entry) -> bool:
    """A wildcard (what it serves is LiteLLM's to say), or a deployment whose own prices bound no route."""
    if entry.wildcard:
        return True
    return not Model(entry.model_name, (_merge(entry, entry.model_name, None),)).priced()


def check_policy(policy: PolicyConfig, catalogue: Catalogue, *, source: str = "CREDITGATE_POLICY_CONFIG") -> None:
    """Start-up (and reload) check: every model the policy file names is served by the LiteLLM config, by
    name or through a wildcard route (a typo would otherwise only show as 404s). `ConfigError`, one line
    per mistake."""
    problems = [
        f"{source}: model {name!r} is not in the LiteLLM config's model_list"
        for name in sorted(policy.models())
        if catalogue.get(name) is None
    ]
    if problems:
        raise ConfigError("\n".join(problems))
