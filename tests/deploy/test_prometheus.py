"""The alert rules and the dashboard against Prometheus itself (Debian's `prometheus` package): `promtool`
checks the rules and the compose scrape config and runs the alerts' unit tests (every alert shown firing
and not firing); then a real Prometheus scrapes a real gateway every second while it serves a little of
everything (answers, a stream, an upstream failure, a 402, a 429, a request let through with Redis gone),
and every query of every dashboard panel answers with data through Prometheus's HTTP API, every alert
rule evaluates cleanly, and the alerts that data calls for are pending."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devstack import services
from tests.deploy.conftest import ALERTS, DEPLOY, dashboard_queries
from tests.e2e.conftest import Gateway, make_member, start_gateway

PROMETHEUS = DEPLOY / "prometheus"
RATE_WINDOW = "5m"  # what $__rate_interval stands for here: wider than the whole test


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool missing: scripts/install-system.sh installs Debian's prometheus package"
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def alert_names() -> list[str]:
    return [r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def test_promtool_checks_the_rules_and_the_compose_scrape_config() -> None:
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0 and f"SUCCESS: {len(alert_names())} rules found" in rules.stdout, rules.stdout
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_unit_tests_show_every_alert_firing_and_not_firing() -> None:
    answer = promtool("test", "rules", "alerts_test.yml")
    assert answer.returncode == 0 and "SUCCESS" in answer.stdout, answer.stdout + answer.stderr
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    fired = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert fired == quiet == set(alert_names())


def test_the_unit_tests_can_fail(tmp_path: Path) -> None:
    """A wrong expectation is caught: the suite above is not vacuous."""
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    text = (PROMETHEUS / "alerts_test.yml").read_text().replace("gw-a:8080 is down", "gw-b:8080 is down", 1)
    (tmp_path / "alerts_test.yml").write_text(text)
    answer = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert answer.returncode == 1 and "FAILED" in answer.stdout + answer.stderr


@pytest.fixture(scope="module")
def own_redis() -> Iterator[services.Service]:
    """This module stops its Redis mid-test (rate limits unenforced), so it has its own."""
    svc = services.start_redis()
    yield svc
    svc.stop()


def limited_policy(directory: Path) -> Path:
    """The shipped policy with the free tier at 3 requests per minute per member."""
    text = (services.ROOT / "policy.yaml").read_text()
    limited, count = re.subn(r"^(\s*free:.*?\brpm: )\d+", r"\g<1>3", text, count=1, flags=re.M)
    assert count == 1
    path = directory / "policy.yaml"
    path.write_text(limited)
    return path


class Prometheus:
    """A Prometheus on a free loopback port with its own storage folder (devstack.services.start_prometheus);
    `stop()` ends it by PID and removes the folder."""

    def __init__(self, targets: list[str]) -> None:
        self.svc = services.start_prometheus(targets, rule_files=[ALERTS])

    def stop(self) -> None:
        self.svc.stop()

    def api(self, path: str, **params: str) -> Any:
        answer = httpx.get(f"{self.svc.url}/api/v1/{path}", params=params, timeout=10)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", f"{path} {params}: {answer.text}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", expr
        return list(data["result"])

    def wait_for(self, expr: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.query(expr):
            assert time.monotonic() < deadline, f"no data for {expr} after {timeout}s:\n{self.svc.tail()}"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def scraped(pg: services.Service, own_redis: services.Service, litellm: services.Service,
            fake_provider: services.Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A gateway that served a little of everything, and a Prometheus that scraped it all along."""
    policy = limited_policy(tmp_path_factory.mktemp("prometheus-policy"))
    gateway = start_gateway(pg, own_redis, litellm, fake_provider, name="deploy_prometheus", policy=policy)
    prometheus: Prometheus | None = None
    try:
        prometheus = Prometheus([gateway.url.removeprefix("http://")])
        prometheus.wait_for('up{job="creditgate"} == 1')
        serve_a_little_of_everything(gateway, own_redis)
        prometheus.wait_for('creditgate_ratelimit_unenforced_total{job="creditgate"}')
        time.sleep(4)  # a few more scrapes, so every rate has samples on both sides of the traffic
        yield prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        gateway.stop()


def serve_a_little_of_everything(gateway: Gateway, redis: services.Service) -> None:
    chat = {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    member = make_member(gateway, tier="starter")
    poor = make_member(gateway, tier="starter", credit=None)
    free = make_member(gateway, tier="free")
    with member.http() as http:
        assert http.post("/v1/chat/completions", json=chat).status_code == 200
        with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as stream:
            assert stream.status_code == 200 and b"[DONE]" in b"".join(stream.iter_bytes())
        failed = http.post("/v1/chat/completions", json={**chat, "fake_status": 500})
        assert failed.status_code == 502, failed.text
    with poor.http() as http:
        refused = http.post("/v1/chat/completions", json=chat)
        assert (refused.status_code, refused.json()["error"]["code"]) == (402, "org_pool_exhausted")
    with free.http() as http:
        statuses = [http.post("/v1/chat/completions", json=chat).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        redis.stop()  # the rate limiter cannot ask Redis: requests pass, counted as unenforced
        for _ in range(3):  # across scrapes: a counter's increments before its first scrape are not a rate
            assert http.post("/v1/chat/completions", json=chat).status_code == 200
            time.sleep(1.5)


def test_every_dashboard_query_answers_with_data(scraped: Prometheus) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    empty = []
    for title, expr in queries:
        result = scraped.query(expr.replace("$__rate_interval", RATE_WINDOW))
        values = [float(sample["value"][1]) for sample in result]
        if not any(math.isfinite(v) for v in values):
            empty.append(f"{title}: {expr} -> {result}")
    assert not empty, "\n".join(empty)


def test_the_queries_see_what_was_served(scraped: Prometheus) -> None:
    def labels(expr: str, label: str) -> set[str]:
        return {s["metric"][label] for s in scraped.query(expr)}

    assert labels(f'sum by (reason) (increase(creditgate_rejections_total[{RATE_WINDOW}]))', "reason") >= {
        "org_pool_exhausted", "rate_limited"}
    assert "upstream_failed" in labels('sum by (code) (creditgate_upstream_errors_total)', "code")
    assert labels("max by (dependency) (creditgate_dependency_up == 1)", "dependency") == {"postgres", "litellm"}
    assert labels("max by (dependency) (creditgate_dependency_up == 0)", "dependency") == {"redis"}
    assert labels("sum by (model) (creditgate_credits_charged_millicredits_total > 0)", "model") == {"fake-small"}
    assert scraped.query("sum(creditgate_overage_millicredits_total) > 0") == []


def test_every_alert_rule_evaluates_and_the_data_makes_the_right_ones_pending(scraped: Prometheus) -> None:
    deadline = time.monotonic() + 20
    while True:
        rules = [r for g in scraped.api("rules")["groups"] for r in g["rules"]]
        if not any(r["lastEvaluation"].startswith("0001-") for r in rules) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(r["name"] for r in rules) == sorted(alert_names())
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    active = {a["labels"]["alertname"]: a["state"] for a in scraped.api("alerts")["alerts"]}
    assert active.get("CreditgateRateLimitsUnenforced") == "pending"  # for: 5m
    assert active.get("CreditgateRedisDown") == "pending"
    for quiet in ("CreditgateDown", "CreditgateAbsent", "CreditgateOverage", "CreditgateHoldsPastExpiry",
                  "CreditgateLedgerUnavailable", "CreditgateLiteLLMDown"):
        assert quiet not in active, active
