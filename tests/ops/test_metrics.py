"""Prometheus metrics: bounded labels, and counts that add up across worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from proxy.ops.metrics import Metrics
from tests.gateway.conftest import Gateway, chat

ROOT = Path(__file__).resolve().parents[2]


def test_metrics_add_up_across_processes(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    work = ("from proxy.ops.metrics import Metrics; m = Metrics(['fake-small']); "
            "m.request('/v1/chat/completions', 200, 0.01); m.charged('fake-small', 3, 4, 250)")
    for _ in range(2):
        subprocess.run([sys.executable, "-c", work], env=env, check=True, timeout=60)
    render = "from proxy.ops.metrics import Metrics; import sys; sys.stdout.write(Metrics().render()[0].decode())"
    text = subprocess.run([sys.executable, "-c", render], env=env, check=True, timeout=60, capture_output=True,
                          text=True).stdout
    assert 'creditgate_requests_total{route="/v1/chat/completions",status="200"} 2.0' in text
    assert 'creditgate_credits_charged_millicredits_total{model="fake-small"} 500.0' in text
    assert 'creditgate_tokens_total{kind="completion",model="fake-small"} 8.0' in text


def test_metrics_endpoint_has_bounded_labels(gateway: Gateway) -> None:
    with gateway.http() as http:
        http.post("/v1/chat/completions", json=chat("no-such-model"))
        http.get("/v1/some/random/path/abc123")
        text = http.get("/metrics").text
    assert 'route="unmatched"' in text
    assert "abc123" not in text and "no-such-model" not in text
    assert 'creditgate_upstream_errors_total{code="model_not_found"}' in text
    assert httpx.get(f"{gateway.url}/metrics").headers["content-type"].startswith("text/plain")


def test_periodic_gauges_render_with_bounded_labels_only() -> None:
    from proxy.ops.metrics import Metrics

    metrics = Metrics(["fake-small"])
    metrics.set_holds(7, 2)
    for dependency, up in (("postgres", True), ("redis", False), ("litellm", True)):
        metrics.set_dependency(dependency, up)
    metrics.set_credit_low("pool", 3, 1)
    metrics.set_credit_low("allocation", 0, 0)
    text = metrics.render()[0].decode()
    lines = {line for line in text.splitlines() if not line.startswith("#")}
    assert {"creditgate_holds_open 7.0", "creditgate_holds_overdue 2.0",
            'creditgate_dependency_up{dependency="postgres"} 1.0', 'creditgate_dependency_up{dependency="redis"} 0.0',
            'creditgate_dependency_up{dependency="litellm"} 1.0',
            'creditgate_credit_low{account="pool",level="low"} 3.0',
            'creditgate_credit_low{account="pool",level="exhausted"} 1.0',
            'creditgate_credit_low{account="allocation",level="low"} 0.0',
            'creditgate_credit_low{account="allocation",level="exhausted"} 0.0'} <= lines


def test_the_spool_counts_replays_by_bounded_outcome_and_its_depth() -> None:
    from proxy.ledger.types import Settlement
    from proxy.ops.metrics import Metrics

    metrics = Metrics(["fake-small"])
    done = Settlement(prompt_tokens=5, completion_tokens=7, charge=300, list_price=300, usage_source="provider",
                      model="fake-small", provider="openai", deployment="fake-small-1")
    metrics.settled("spooled", done)  # spooled: not posted yet, so no tokens or credits
    metrics.set_spool_depth(1)
    metrics.replayed("posted", done)  # posted by the replay: now they count
    metrics.replayed("already_settled", done)
    metrics.replayed("something new", None)
    metrics.set_spool_depth(0)
    lines = {line for line in metrics.render()[0].decode().splitlines() if not line.startswith("#")}
    assert {'creditgate_settlements_total{outcome="spooled"} 1.0',
            'creditgate_spool_replayed_total{outcome="posted"} 1.0',
            'creditgate_spool_replayed_total{outcome="already_settled"} 1.0',
            'creditgate_spool_replayed_total{outcome="other"} 1.0', "creditgate_spool_depth 0.0",
            'creditgate_tokens_total{kind="completion",model="fake-small"} 7.0',
            'creditgate_credits_charged_millicredits_total{model="fake-small"} 300.0'} <= lines


def test_the_configuration_serving_and_its_reloads() -> None:
    """One price version at 1 (the one charged with now), the ones before it at 0; the model label follows
    the catalogue a reload swapped in (wildcard expansions included)."""
    metrics = Metrics(["old-model"])
    metrics.config_serving("pv_00000000000000a1", False, ["old-model"])
    metrics.config_reloaded("ok")
    metrics.config_serving("pv_00000000000000b2", True, ["openai/gpt-4o", "new-model"])
    metrics.config_reloaded("failed")
    text = metrics.render()[0].decode()
    for line in ('creditgate_price_version{version="pv_00000000000000a1"} 0.0',
                 'creditgate_price_version{version="pv_00000000000000b2"} 1.0',
                 "creditgate_catalogue_complete 1.0", 'creditgate_config_reloads_total{outcome="ok"} 1.0',
                 'creditgate_config_reloads_total{outcome="failed"} 1.0'):
        assert line in text.splitlines()
    assert (metrics.model("openai/gpt-4o"), metrics.model("old-model")) == ("openai/gpt-4o", "other")


def test_dropped_trace_spans_are_counted_by_bounded_reason() -> None:
    metrics = Metrics()
    metrics.spans_dropped("queue_full", 11)
    metrics.spans_dropped("export_failed", 512)
    metrics.spans_dropped("anything else", 1)
    lines = metrics.render()[0].decode().splitlines()
    for line in ('creditgate_trace_spans_dropped_total{reason="queue_full"} 11.0',
                 'creditgate_trace_spans_dropped_total{reason="export_failed"} 512.0',
                 'creditgate_trace_spans_dropped_total{reason="other"} 1.0'):
        assert line in lines


def test_export_and_budget_alert_metrics_keep_their_labels_bounded() -> None:
    metrics = Metrics()
    metrics.exported("delivered", 3)
    metrics.exported("retried", 0)
    metrics.exported("something-else", 2)
    metrics.budget_alert("pool", 80)
    metrics.budget_alert("allocation", 100)
    metrics.budget_alert("allocation", 100)
    metrics.budget_alert("org_acme", 50)  # never an org, never a value outside 1-100
    metrics.budget_alert("pool", 1000)
    metrics.set_export_depth(4, 12.5, 1)
    metrics.export_delay(0.02)
    value = metrics.registry.get_sample_value
    assert value("creditgate_export_events_total", {"outcome": "delivered"}) == 3
    assert value("creditgate_export_events_total", {"outcome": "retried"}) is None
    assert value("creditgate_export_events_total", {"outcome": "other"}) == 2
    assert value("creditgate_budget_alerts_total", {"scope": "pool", "threshold": "80"}) == 1
    assert value("creditgate_budget_alerts_total", {"scope": "allocation", "threshold": "100"}) == 2
    text = metrics.render()[0].decode()
    assert "org_acme" not in text and 'threshold="1000"' not in text
    assert (value("creditgate_export_outbox_pending"), value("creditgate_export_outbox_oldest_seconds"),
            value("creditgate_export_dead_letters"), value("creditgate_export_delay_seconds_count")) == (4, 12.5, 1, 1)
