"""The Grafana dashboard and the alert rules read only what the gateway exports: every metric name they
use is one `proxy/ops/metrics.py` defines, every label they group by is one of that metric's labels, and
every panel has a query on the provisioned datasource. (tests/deploy/test_prometheus.py then runs every
query against a real Prometheus scraping a real gateway.)"""

from __future__ import annotations

import json
import re

import yaml

from proxy.ops.metrics import Metrics
from tests.deploy.conftest import ALERTS, DASHBOARD, DEPLOY, dashboard_queries

_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
             "gauge": ("",)}


def exported() -> dict[str, set[str]]:
    """Every sample name the gateway's registry can export -> its label names (plus `le` for buckets)."""
    names: dict[str, set[str]] = {}
    metrics = Metrics(["m"])
    for family in metrics.registry.collect():
        collector = metrics.registry._names_to_collectors[family.name + _SUFFIXES[family.type][0]]
        labels = set(getattr(collector, "_labelnames", ()))
        for suffix in _SUFFIXES[family.type]:
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def alert_queries() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def test_every_metric_and_label_queried_is_exported() -> None:
    names = exported()
    queries = dashboard_queries() + alert_queries()
    assert len(queries) >= 30
    used: set[str] = set()
    for title, expr in queries:
        for metric, selector in re.findall(r"(creditgate_[a-z_]+)(\{[^}]*\})?", expr):
            assert metric in names, f"{title}: {metric} is not exported"
            used.add(metric)
            for label in re.findall(r"([a-z_]+)\s*[=!~]", selector or ""):
                assert label in names[metric] | {"job", "instance"}, f"{title}: {metric} has no label {label}"
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            for label in (x.strip() for x in grouping.split(",")):
                assert any(label in names.get(m, set()) for m in re.findall(r"creditgate_[a-z_]+", expr)) or \
                    label in ("instance", "job"), f"{title}: no metric of it has the label {label}"
    # the dashboard covers what an operator watches
    for metric in ("creditgate_requests_total", "creditgate_request_duration_seconds_bucket",
                   "creditgate_upstream_duration_seconds_bucket", "creditgate_overhead_seconds_bucket",
                   "creditgate_active_streams", "creditgate_holds_open", "creditgate_holds_expired_total",
                   "creditgate_holds_overdue", "creditgate_credits_charged_millicredits_total",
                   "creditgate_tokens_total", "creditgate_rejections_total", "creditgate_overage_millicredits_total",
                   "creditgate_upstream_errors_total", "creditgate_dependency_up", "creditgate_credit_low",
                   "creditgate_ratelimit_unenforced_total", "creditgate_settlements_total"):
        assert metric in used, metric


def test_every_panel_queries_the_provisioned_datasource() -> None:
    board = json.loads(DASHBOARD.read_text())
    source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len(panels) >= 15 and board["uid"] == "creditgate"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["targets"] and panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid and target["expr"].strip()
            # the only variable is Grafana's own rate window: nothing an operator must define first
            assert set(re.findall(r"\$\{?(\w+)", target["expr"])) <= {"__rate_interval"}, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
