"""Prometheus metrics: bounded labels, and counts that add up across worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

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
