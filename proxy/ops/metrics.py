"""Prometheus metrics, defined once per app in one `Metrics` object with bounded labels.

Labels are route templates, statuses, model names from the configured list (else "other"), token
kinds and reason codes; never an org, user, key or raw path. With several workers set
PROMETHEUS_MULTIPROC_DIR before the workers start (the CLI does): every process then writes its
samples to that directory and `/metrics` aggregates them (prometheus_client multiprocess mode).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from proxy.ledger.types import Settlement

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_OUTCOMES = frozenset({"posted", "late_posted", "already_settled", "voided", "failed"})
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


def configured_models(litellm_config: Path) -> frozenset[str]:
    """Model names of a LiteLLM config's `model_list` (empty when the file cannot be read)."""
    try:
        data = yaml.safe_load(litellm_config.read_text())
    except (OSError, yaml.YAMLError):
        return frozenset()
    entries = data.get("model_list") if isinstance(data, dict) else None
    return frozenset(
        str(e["model_name"]) for e in entries or () if isinstance(e, dict) and e.get("model_name")
    )


class Metrics:
    """Every creditgate metric. The ledger, the sweeper and policies call the small methods below."""

    def __init__(self, models: Iterable[str] = (), registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._models = frozenset(models)
        r = self.registry
        self.requests = Counter("creditgate_requests", "Requests by route template and status.",
                                ["route", "status"], registry=r)
        self.request_duration = Histogram("creditgate_request_duration_seconds", "Whole request time.",
                                          ["route"], buckets=_LATENCY, registry=r)
        self.upstream_duration = Histogram("creditgate_upstream_duration_seconds", "Time waiting for LiteLLM.",
                                           ["route"], buckets=_LATENCY, registry=r)
        self.overhead = Histogram("creditgate_overhead_seconds", "Gateway time excluding the wait for LiteLLM.",
                                  ["route"], buckets=_OVERHEAD, registry=r)
        self.tokens = Counter("creditgate_tokens", "Tokens settled, by model and kind (prompt|completion).",
                              ["model", "kind"], registry=r)
        self.credits = Counter("creditgate_credits_charged_millicredits", "Millicredits charged, by model.",
                               ["model"], registry=r)
        self.holds_open = Gauge("creditgate_holds_open", "Credit holds currently open.", registry=r,
                                multiprocess_mode="livemax")
        self.holds_expired = Counter("creditgate_holds_expired", "Holds settled by the sweeper after expiry.",
                                     registry=r)
        self.rejections = Counter("creditgate_rejections", "Requests refused before forwarding, by reason.",
                                  ["reason"], registry=r)
        self.active_streams = Gauge("creditgate_active_streams", "Streams being relayed now.", registry=r,
                                    multiprocess_mode="livesum")
        self.settlements = Counter("creditgate_settlements", "Settlements by outcome (posted, voided, ...).",
                                   ["outcome"], registry=r)
        self._requests: dict[tuple[str, int], Counter] = {}
        self._routes: dict[str, tuple[Histogram, Histogram, Histogram]] = {}
        self.overage_total = Counter("creditgate_overage_millicredits", "Millicredits charged above their hold "
                                     "(a defect: the hold bounds every charge), by model.", ["model"], registry=r)
        self.upstream_errors = Counter("creditgate_upstream_errors", "Upstream failures by error code.",
                                       ["code"], registry=r)
        self.ratelimit_unenforced = Counter(
            "creditgate_ratelimit_unenforced", "Requests let through unchecked because Redis did not answer "
            "in time, by reason (timeout|unavailable).", ["reason"], registry=r)

    def model(self, name: str | None) -> str:
        """The bounded label for a model name: itself when configured, else "other"."""
        return name if name is not None and name in self._models else "other"

    def request(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        counter = self._requests.get(key)
        if counter is None:  # labels() costs a lock and a tuple build: keep the children per route
            counter = self._requests[key] = self.requests.labels(route, str(status))
        counter.inc()
        self._per_route(route)[0].observe(seconds)

    def timing(self, route: str, upstream_seconds: float, overhead_seconds: float) -> None:
        _, upstream, overhead = self._per_route(route)
        upstream.observe(upstream_seconds)
        overhead.observe(max(overhead_seconds, 0.0))

    def _per_route(self, route: str) -> tuple[Histogram, Histogram, Histogram]:
        children = self._routes.get(route)
        if children is None:
            children = self._routes[route] = (self.request_duration.labels(route),
                                              self.upstream_duration.labels(route), self.overhead.labels(route))
        return children

    def charged(self, model: str | None, prompt_tokens: int, completion_tokens: int, millicredits: int) -> None:
        label = self.model(model)
        self.tokens.labels(label, "prompt").inc(prompt_tokens)
        self.tokens.labels(label, "completion").inc(completion_tokens)
        self.credits.labels(label).inc(millicredits)

    def settled(self, outcome: str, settlement: Settlement | None) -> None:
        """The `record` hook of ReserveCredits (policies.settlement.Record): counts every outcome, and the tokens
        and credits of a settlement that was posted (never twice for "already_settled")."""
        self.settlements.labels(outcome if outcome in _OUTCOMES else "other").inc()
        if settlement is not None and outcome in ("posted", "late_posted"):
            self.charged(settlement.model, settlement.prompt_tokens, settlement.completion_tokens, settlement.charge)

    def overage(self, model: str | None, millicredits: int) -> None:
        """The `on_overage` hook of ReserveCredits."""
        self.overage_total.labels(self.model(model)).inc(millicredits)

    def rejected(self, code: str | None) -> None:
        self.rejections.labels(code or "unknown").inc()

    def upstream_error(self, code: str | None) -> None:
        self.upstream_errors.labels(code or "unknown").inc()

    def ratelimit_skipped(self, reason: str) -> None:
        """The `unenforced` hook of policies.ratelimit.RateLimit."""
        self.ratelimit_unenforced.labels(reason if reason in ("timeout", "unavailable") else "other").inc()

    def set_holds_open(self, count: int) -> None:
        self.holds_open.set(count)

    def hold_expired(self, count: int = 1) -> None:
        self.holds_expired.inc(count)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type; aggregates all workers in multiprocess mode."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
