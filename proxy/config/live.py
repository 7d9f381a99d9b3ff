"""The live configuration: one immutable snapshot (policy file, catalogue, price version) swapped whole.

`LiveConfig.current` is read once at the start of every request (policies pin it on the request's
context), so a request runs, is held and is settled under one snapshot: a reload never reprices a
request in flight. `Reloader` replaces the snapshot on SIGHUP, when a watched file changes (optional
polling), and when LiteLLM's model info arrives or changes; it reads and checks the files exactly as
start-up does (`load`), swaps atomically (one attribute assignment on the event loop), and refuses a bad
file with one log line per problem, keeping the old snapshot.

The price version names what a charge was computed from: `price_table()` is the canonical JSON text of
every price (per model and deployment, with where it came from) and every factor of the formula
(credits per USD, tier markups, power level multipliers and the models they list); the version is
`pv_` + the first 16 hex digits of its SHA-256. Every replica and worker reading the same files and
model info gets the same version without asking anyone; the ledger records it on every hold and usage
record, and stores the table once per version (proxy/ledger/queries.py) so an auditor can read it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from proxy.config.catalogue import Catalogue, Deployment
from proxy.config.modelinfo import PRICE_FIELDS
from proxy.config.policy import PolicyConfig


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The configuration one request runs under; `version` is the price version, `prices` its table."""

    policy: PolicyConfig
    catalogue: Catalogue
    version: str
    prices: str

    @classmethod
    def of(cls, policy: PolicyConfig, catalogue: Catalogue) -> Snapshot:
        prices = price_table(policy, catalogue)
        return cls(policy, catalogue, price_version(prices), prices)


class LiveConfig:
    """Holds the current `Snapshot`. Reading `current` is one attribute read; the `Reloader` assigns it."""

    __slots__ = ("current",)

    def __init__(self, first: Snapshot) -> None:
        self.current = first


def price_version(table: str) -> str:
    return "pv_" + hashlib.sha256(table.encode()).hexdigest()[:16]


def price_table(policy: PolicyConfig, catalogue: Catalogue) -> str:
    """The canonical JSON text of everything a charge is computed from (keys sorted, decimals as plain
    decimal text: `5E-8` and `0.00000005` are one price)."""
    table: dict[str, Any] = {
        "credits_per_usd": _text(policy.credits_per_usd),
        "tiers": {t.name: {"markup": _text(t.markup)} for t in policy.tiers},
        "power_levels": {lv.name: {"multiplier": _text(lv.multiplier), "models": list(lv.models)}
                         for lv in policy.power_levels},
        "models": {name: [_deployment(d) for d in model.deployments] for name, model in catalogue.models.items()},
        "wildcard_routes": {p.regex: [{"model_name": e.model_name, "model": e.target, "deployment": ident,
                                       **_prices((e.price.input, e.price.output, e.price.image), None)}
                                      for e, ident in p.entries] for p in catalogue.patterns},
    }
    return json.dumps(table, sort_keys=True, separators=(",", ":"))


def _deployment(d: Deployment) -> dict[str, Any]:
    return {"deployment": d.id, "provider": d.provider,
            **_prices((d.price.input, d.price.output, d.price.image), dict(d.sources))}


def _prices(values: tuple[Decimal | None, ...], sources: Mapping[str, str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {key: None if v is None else _text(v) for key, v in zip(PRICE_FIELDS, values, strict=True)}
    if sources is not None:
        out["source"] = {key: sources[key] for key in PRICE_FIELDS if key in sources}
    return out


def _text(value: Decimal) -> str:
    """Plain decimal text, no exponent, no trailing zeros: one spelling per number."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text
