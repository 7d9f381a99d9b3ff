"""Prometheus metrics, defined once per app in one `Metrics` object with bounded labels.

Labels are route templates, statuses, model names from the configured list (else "other"), token
kinds, reason codes, dependency names and account kinds; never an org, user, key or raw path. With several workers set
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
_OUTCOMES = frozenset({"posted", "late_posted", "already_settled", "voided", "spooled", "failed"})
_REPLAYED = frozenset({"posted", "late_posted", "already_settled", "voided", "conflict", "not_found", "invalid"})
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
        self.settlements = Counter("creditgate_settlements", "Settlements by outcome (posted, voided, ...; "
                                   "spooled: the ledger was unreachable, kept on local disk for replay).",
                                   ["outcome"], registry=r)
        self.spool_replayed = Counter("creditgate_spool_replayed", "Spooled settlements replayed once the ledger "
                                      "answered, by outcome (posted, late_posted, already_settled, voided; "
                                      "conflict, not_found, invalid: dropped).", ["outcome"], registry=r)
        self.spool_depth = Gauge("creditgate_spool_depth", "Settlements waiting in the local spool for the "
                                 "ledger.", registry=r, multiprocess_mode="livesum")
        self._requests: dict[tuple[str, int], Counter] = {}
        self._routes: dict[str, tuple[Histogram, Histogram, Histogram]] = {}
        self.overage_total = Counter("creditgate_overage_millicredits", "Millicredits charged above their hold "
                                     "(a defect: the hold bounds every charge), by model.", ["model"], registry=r)
        self.upstream_errors = Counter("creditgate_upstream_errors", "Upstream failures by error code.",
                                       ["code"], registry=r)
        self.trace_spans_dropped = Counter(
            "creditgate_trace_spans_dropped", "Trace spans not exported (CREDITGATE_OTLP_ENDPOINT), by reason: "
            "queue_full (the collector is slower than the traffic) or export_failed (it refused or did not "
            "answer).", ["reason"], registry=r)
        self.ratelimit_unenforced = Counter(
            "creditgate_ratelimit_unenforced", "Requests let through unchecked because Redis did not answer "
            "in time, by reason (timeout|unavailable).", ["reason"], registry=r)
        # refreshed by the app's periodic task (proxy/ops/gauges.py), every sweep interval
        self.holds_overdue = Gauge(
            "creditgate_holds_overdue", "Pending holds past their expiry plus the ledger's grace (invariant 3: "
            "should stay 0, the sweeper settles them).", registry=r, multiprocess_mode="livemax")
        self.dependency_up = Gauge(
            "creditgate_dependency_up", "1 when the dependency (postgres|redis|litellm) answered the last periodic "
            "check, else 0.", ["dependency"], registry=r, multiprocess_mode="livemin")
        self.credit_low = Gauge(
            "creditgate_credit_low", "Pools (orgs ever granted credit) and allocations (members with a positive "
            "limit) with under 10% of their credit or period limit left (level=low, exhausted included) or none "
            "left (level=exhausted); suspended ones are not counted.", ["account", "level"], registry=r,
            multiprocess_mode="livemax")
        # the live configuration (proxy/config/reload.py): one version label per configuration loaded
        self.config_reloads = Counter("creditgate_config_reloads", "Configuration swaps by outcome (ok: a new "
                                      "configuration serves; failed: refused, the previous one serves on).",
                                      ["outcome"], registry=r)
        self.price_version = Gauge("creditgate_price_version", "1 for the price version requests are charged "
                                   "with now, 0 for one charged with before a reload.", ["version"], registry=r,
                                   multiprocess_mode="livemax")
        self.catalogue_complete = Gauge("creditgate_catalogue_complete", "1 when every model the LiteLLM config "
                                        "needs priced by LiteLLM's model info has been read, else 0.", registry=r,
                                        multiprocess_mode="livemin")
        self._price_version: str | None = None
        # the usage export (proxy/export/deliver.py) and budget alerts
        self.export_events = Counter("creditgate_export_events", "Export delivery attempts by outcome (delivered, "
                                     "retried: failed and scheduled again, dead_lettered).", ["outcome"], registry=r)
        self.export_delays = Histogram("creditgate_export_delay_seconds", "From the event (a settlement, a grant, an "
                                      "alert) to its acknowledged delivery.", buckets=_LATENCY, registry=r)
        self.export_pending = Gauge("creditgate_export_outbox_pending", "Export events not yet delivered (dead "
                                    "letters excluded).", registry=r, multiprocess_mode="livemax")
        self.export_oldest = Gauge("creditgate_export_outbox_oldest_seconds", "Age of the oldest export event not "
                                   "yet delivered (0 when none waits).", registry=r, multiprocess_mode="livemax")
        self.export_dead = Gauge("creditgate_export_dead_letters", "Export events dead-lettered, waiting for an "
                                 "operator (POST /admin/export/dead-letters/{id}/retry).", registry=r,
                                 multiprocess_mode="livemax")
        self.budget_alerts = Counter("creditgate_budget_alerts", "Budget alerts fired, by scope (pool|allocation) "
                                     "and threshold percent; never which org or member.", ["scope", "threshold"],
                                     registry=r)

    def spans_dropped(self, reason: str, spans: int) -> None:
        """The `on_drop` hook of proxy.ops.tracing.OtlpExporter: spans lost (queue_full | export_failed)."""
        self.trace_spans_dropped.labels(reason if reason in ("queue_full", "export_failed") else "other").inc(spans)

    def model(self, name: str | None) -> str:
        """The bounded label for a model name: itself when configured, else "other"."""
        return name if name is not None and name in self._models else "other"

    def config_reloaded(self, outcome: str) -> None:
        self.config_reloads.labels(outcome if outcome in ("ok", "failed") else "other").inc()

    def config_serving(self, price_version: str, complete: bool, models: Iterable[str]) -> None:
        """The configuration now serving: its price version, whether its catalogue is complete, and its model
        names (the model label's values: the catalogue's, wildcard expansions included)."""
        if self._price_version not in (None, price_version):
            self.price_version.labels(self._price_version).set(0)
        self._price_version = price_version
        self.price_version.labels(price_version).set(1)
        self.catalogue_complete.set(1 if complete else 0)
        self._models = frozenset(models)

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

    def replayed(self, outcome: str, settlement: Settlement | None) -> None:
        """The `on_replayed` hook of proxy.ledger.replay.Replayer: a spooled settlement done, by outcome; its
        tokens and credits are counted now, when they were posted (never at spool time)."""
        self.spool_replayed.labels(outcome if outcome in _REPLAYED else "other").inc()
        if settlement is not None and outcome in ("posted", "late_posted"):
            self.charged(settlement.model, settlement.prompt_tokens, settlement.completion_tokens, settlement.charge)

    def set_spool_depth(self, entries: int) -> None:
        """The `on_depth` hook of proxy.ledger.spool.Spool."""
        self.spool_depth.set(entries)

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

    def set_holds(self, open_count: int, overdue: int) -> None:
        self.holds_open.set(open_count)
        self.holds_overdue.set(overdue)

    def set_dependency(self, dependency: str, up: bool) -> None:
        """One of a fixed set of names (postgres, redis, litellm), set by the periodic task."""
        self.dependency_up.labels(dependency).set(1 if up else 0)

    def set_credit_low(self, account: str, low: int, exhausted: int) -> None:
        """`account` is "pool" or "allocation"; counts only, never which org or member."""
        self.credit_low.labels(account, "low").set(low)
        self.credit_low.labels(account, "exhausted").set(exhausted)

    def exported(self, outcome: str, count: int) -> None:
        """Export deliveries done: delivered, retried or dead_lettered."""
        if count:
            self.export_events.labels(outcome if outcome in ("delivered", "retried", "dead_lettered") else "other"
                                      ).inc(count)

    def export_delay(self, seconds: float) -> None:
        self.export_delays.observe(seconds)

    def set_export_depth(self, pending: int, oldest_seconds: float, dead: int) -> None:
        self.export_pending.set(pending)
        self.export_oldest.set(oldest_seconds)
        self.export_dead.set(dead)

    def budget_alert(self, scope: str, threshold: int) -> None:
        """One alert fired; thresholds are whole percents 1-100, so the label stays bounded."""
        if scope in ("pool", "allocation") and 1 <= threshold <= 100:
            self.budget_alerts.labels(scope, str(threshold)).inc()

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
