"""The policy file (CREDITGATE_POLICY_CONFIG): power levels, tiers, credits per USD, hold timing.

`load_policy(path)` returns a frozen `PolicyConfig` or raises `ConfigError` with one line per
mistake. Every number that may be fractional is a `Decimal` built from its YAML text
(`decimal_yaml_load`), never through a binary float: `0.1` is exactly one tenth.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from proxy.config.settings import ConfigError


class _DecimalLoader(yaml.SafeLoader):
    """A SafeLoader whose floats are `Decimal(text)`: prices and multipliers stay exact."""


def _construct_decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal:
    text = str(loader.construct_scalar(node)).replace("_", "")  # type: ignore[arg-type]
    lowered = text.lower()
    if lowered in (".inf", "+.inf", "-.inf", ".nan"):
        return Decimal("NaN")  # rejected by `as_decimal`: no infinite prices
    return Decimal(text)


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)


def decimal_yaml_load(text: str) -> Any:
    """Parse YAML with floats as exact `Decimal`s (ints stay ints)."""
    return yaml.load(text, Loader=_DecimalLoader)  # a SafeLoader subclass: no arbitrary objects


def load_yaml(text: str, source: str) -> Any:
    """`decimal_yaml_load`, with a syntax error as one `ConfigError` line naming the file, the line and
    the column (1-based, as editors count)."""
    try:
        return decimal_yaml_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError(f"{source}: not valid YAML: {where}{exc.problem or exc.context}") from None
    except (yaml.YAMLError, InvalidOperation) as exc:
        raise ConfigError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None


def unknown_keys(raw: Mapping[str, Any], known: Collection[str], where: str, problems: list[str]) -> None:
    """One problem per key of `raw` not in `known`, naming the nearest valid key when one is close: a
    misspelt key must never silently leave a setting at its default."""
    for key in raw:
        if key in known:
            continue
        near = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]!r}?)" if near else f" (expected one of {', '.join(sorted(known))})"
        problems.append(f"{where}{key!r} is not a known setting{hint}")


def as_decimal(value: object) -> Decimal | None:
    """An exact finite Decimal from an int, a Decimal or numeric text (`"1e-7"`), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, str):
        try:
            parsed = Decimal(value.strip())
        except InvalidOperation:
            return None
        return parsed if parsed.is_finite() else None
    return None


@dataclass(frozen=True, slots=True)
class PowerLevel:
    name: str
    multiplier: Decimal
    max_tokens: int
    models: tuple[str, ...]  # in order: the first one the tier allows serves `auto`


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    markup: Decimal
    models: tuple[str, ...]  # names, or "*" for every model
    rpm: int | None = None  # requests per minute per member (org, user); None = unlimited
    tpm: int | None = None  # tokens per minute per member; None = unlimited
    org_rpm: int | None = None  # requests per minute of the whole org (all its members); None = unlimited
    org_tpm: int | None = None  # tokens per minute of the whole org; None = unlimited
    downgrade: bool = False  # a hold that does not fit is retried at lower power levels (policies/fit.py)

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    credits_per_usd: Decimal
    hold_ttl_seconds: int
    sweep_interval_seconds: Decimal
    default_power_level: str
    power_levels: tuple[PowerLevel, ...]
    tiers: tuple[Tier, ...]
    # provider parameters callers may send beyond OpenAI's own: "*" for every model, else per model name
    forward_params: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def forwarded(self, model: str) -> frozenset[str]:
        """The extra body fields forwarded for `model` (the global list plus the model's own)."""
        common = self.forward_params.get("*", frozenset())
        own = self.forward_params.get(model)
        return common | own if own else common

    def level(self, name: str) -> PowerLevel | None:
        return next((lv for lv in self.power_levels if lv.name == name), None)

    def tier(self, name: str) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)

    def lower_levels(self, level: PowerLevel) -> tuple[PowerLevel, ...]:
        """The levels a downgrade from `level` tries, nearest first: those listed before it (the file lists
        its levels lowest first, as the shipped eco, balanced, precision)."""
        names = [lv.name for lv in self.power_levels]
        return tuple(reversed(self.power_levels[:names.index(level.name)])) if level.name in names else ()

    def multiplier_for(self, level: PowerLevel, model: str) -> Decimal:
        """The level's multiplier when it lists `model`; else the highest multiplier among the levels
        that list it (asking for an expensive model at the eco price is no discount); else 1."""
        if model in level.models:
            return level.multiplier
        listing = [lv.multiplier for lv in self.power_levels if model in lv.models]
        return max(listing) if listing else Decimal(1)

    def models(self) -> set[str]:
        """Every model name the file mentions (for checking against the LiteLLM catalogue)."""
        names = {m for lv in self.power_levels for m in lv.models}
        names |= {m for m in self.forward_params if m != "*"}
        return names | {m for t in self.tiers for m in t.models if m != "*"}


def read_config(path: Path, variable: str) -> str:
    """The text of a configuration file; `ConfigError` names the variable that points at it."""
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {str(path)!r}: {exc.strerror}") from None


def load_policy(path: Path) -> PolicyConfig:
    """Read and validate the policy file; `ConfigError` names the file and each mistake."""
    return parse_policy(read_config(path, "CREDITGATE_POLICY_CONFIG"), source=str(path))


def parse_policy(text: str, *, source: str = "policy file") -> PolicyConfig:
    raw = load_yaml(text, source)
    problems: list[str] = []
    config = _build(raw if isinstance(raw, Mapping) else {}, problems)
    if not isinstance(raw, Mapping):
        problems.insert(0, "the file must be a YAML mapping")
    if problems or config is None:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return config


def _number(raw: Mapping[str, Any], key: str, where: str, problems: list[str], *, minimum: Decimal) -> Decimal:
    value = as_decimal(raw.get(key))
    if value is None:
        problems.append(f"{where}{key} must be a number, got {raw.get(key)!r}")
        return Decimal(0)
    if value < minimum:
        problems.append(f"{where}{key} must be at least {minimum}, got {value}")
    return value


RATE_LIMIT_MAX = 100_000_000
"""The largest rpm / tpm: policies/ratelimit.py's Lua keeps its buckets in integers below 2**53, exact."""


def _optional_count(raw: Mapping[str, Any], key: str, where: str, problems: list[str]) -> int | None:
    """An optional positive integer (a rate limit) of at most RATE_LIMIT_MAX; absent or null means
    unlimited."""
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= RATE_LIMIT_MAX:
        problems.append(f"{where}{key} must be a positive integer of at most {RATE_LIMIT_MAX} (omit it for no "
                        f"limit), got {value!r}")
        return None
    return value


def _names(raw: Mapping[str, Any], where: str, problems: list[str]) -> tuple[str, ...]:
    models = raw.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        problems.append(f"{where}models must be a non-empty list of model names")
        return ()
    return tuple(models)


_TOP = ("credits_per_usd", "hold_ttl_seconds", "sweep_interval_seconds", "default_power_level", "power_levels",
        "tiers", "forward_params")
_LEVEL = ("multiplier", "max_tokens", "models")
_TIER = ("markup", "models", "rpm", "tpm", "org_rpm", "org_tpm", "downgrade")


def _section(raw: Mapping[str, Any], key: str, what: str, known: Collection[str],
             problems: list[str]) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    """(name, settings, "key.name.") of each entry of the mapping `key`; one problem for a missing or
    empty section, one per entry that is not a mapping, one per unknown setting."""
    section = raw.get(key)
    if not isinstance(section, Mapping) or not section:
        problems.append(f"{key} must be a non-empty mapping of {what} name to settings")
        return
    for name, spec in section.items():
        if not isinstance(spec, Mapping):
            problems.append(f"{key}.{name} must be a mapping")
            continue
        where = f"{key}.{name}."
        unknown_keys(spec, known, where, problems)
        yield str(name), spec, where


def _build(raw: Mapping[str, Any], problems: list[str]) -> PolicyConfig | None:
    unknown_keys(raw, _TOP, "", problems)
    credits_per_usd = _number(raw, "credits_per_usd", "", problems, minimum=Decimal("0.000001"))
    ttl = raw.get("hold_ttl_seconds", 120)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 3:
        problems.append(f"hold_ttl_seconds must be an integer of at least 3, got {ttl!r}")
        ttl = 120
    timing = {"sweep_interval_seconds": raw.get("sweep_interval_seconds", 1)}  # optional, default 1 s
    sweep = _number(timing, "sweep_interval_seconds", "", problems, minimum=Decimal("0.01"))
    levels: list[PowerLevel] = []
    for name, spec, where in _section(raw, "power_levels", "level", _LEVEL, problems):
        multiplier = _number(spec, "multiplier", where, problems, minimum=Decimal(0))
        cap = spec.get("max_tokens")
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            problems.append(f"{where}max_tokens must be a positive integer, got {cap!r}")
            cap = 1
        levels.append(PowerLevel(name, multiplier, cap, _names(spec, where, problems)))
    tiers: list[Tier] = []
    for name, spec, where in _section(raw, "tiers", "tier", _TIER, problems):
        markup = _number(spec, "markup", where, problems, minimum=Decimal(0))
        rpm, tpm, org_rpm, org_tpm = (_optional_count(spec, key, where, problems)
                                      for key in ("rpm", "tpm", "org_rpm", "org_tpm"))
        downgrade = spec.get("downgrade", False)
        if not isinstance(downgrade, bool):
            problems.append(f"{where}downgrade must be true or false, got {downgrade!r}")
            downgrade = False
        tiers.append(Tier(name, markup, _names(spec, where, problems), rpm, tpm, org_rpm, org_tpm, downgrade))
    default = raw.get("default_power_level")
    if not any(lv.name == default for lv in levels):
        problems.append(f"default_power_level must name one of power_levels, got {default!r}")
    forward = _forward_params(raw.get("forward_params"), problems)
    if problems:
        return None
    return PolicyConfig(credits_per_usd, ttl, sweep, str(default), tuple(levels), tuple(tiers), forward)


def _forward_params(raw: Any, problems: list[str]) -> dict[str, frozenset[str]]:
    """`forward_params`: model name (or "*") -> provider parameter names. Which names may be forwarded at
    all is the gateway's to say (proxy/gateway/params.py, `check_forward_params`, at start-up)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append("forward_params must be a mapping of model name (or \"*\") to a list of parameter names")
        return {}
    forward: dict[str, frozenset[str]] = {}
    for model, names in raw.items():
        if names is None:
            names = []
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            problems.append(f"forward_params.{model} must be a list of parameter names")
            continue
        forward[str(model)] = frozenset(names)
    return forward
