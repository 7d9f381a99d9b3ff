"""Settings validation: one clear line per mistake naming the variable; secrets never in repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config.settings import ConfigError, Settings
from proxy.ledger.types import Settlement
from proxy.ops.metrics import Metrics, configured_models

ROOT = Path(__file__).resolve().parents[2]
FERNET = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI="
GOOD = {
    "CREDITGATE_DATABASE_URL": "postgresql://app:db-password@127.0.0.1:5432/creditgate",
    "CREDITGATE_REDIS_URL": "redis://:redis-password@127.0.0.1:6379/0",
    "CREDITGATE_UPSTREAM_URL": "http://127.0.0.1:4000/",
    "CREDITGATE_UPSTREAM_KEY": "sk-upstream-secret",
    "CREDITGATE_ADMIN_TOKEN": "admin-token-secret-value",
    "CREDITGATE_BYOK_KEYS": FERNET,
    "CREDITGATE_LITELLM_CONFIG": str(ROOT / "litellm_config.yaml"),
    "CREDITGATE_POLICY_CONFIG": str(ROOT / "policy.yaml"),
}


def test_good_settings_hide_their_secrets() -> None:
    settings = Settings.from_env(GOOD)
    assert settings.upstream_url == "http://127.0.0.1:4000"
    assert (settings.port, settings.workers, settings.max_body_bytes) == (8080, 1, 16 * 1024 * 1024)
    text = repr(settings) + str(settings)
    for secret in ("db-password", "redis-password", "sk-upstream-secret", "admin-token-secret-value", FERNET):
        assert secret not in text


def test_every_mistake_is_one_line_naming_its_variable() -> None:
    bad = {**GOOD, "CREDITGATE_DATABASE_URL": "mysql://x", "CREDITGATE_UPSTREAM_KEY": "",
           "CREDITGATE_PORT": "http", "CREDITGATE_MAX_BODY_BYTES": "0", "CREDITGATE_BYOK_KEYS": "not-a-key",
           "CREDITGATE_POLICY_CONFIG": "/nonexistent/policy.yaml"}
    del bad["CREDITGATE_REDIS_URL"]
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(bad)
    lines = str(raised.value).splitlines()
    assert lines == [
        "CREDITGATE_DATABASE_URL must be a URL with scheme postgres or postgresql",
        "CREDITGATE_REDIS_URL is required but not set",
        "CREDITGATE_UPSTREAM_KEY is required but not set",
        "CREDITGATE_BYOK_KEYS must be comma-separated Fernet keys (32 url-safe base64 bytes)",
        "CREDITGATE_POLICY_CONFIG points to '/nonexistent/policy.yaml', which is not a readable file",
        "CREDITGATE_PORT must be an integer, got 'http'",
        "CREDITGATE_MAX_BODY_BYTES must be at least 1, got '0'",
    ]
    assert "sk-upstream" not in str(raised.value)


def test_metric_model_labels_are_bounded() -> None:
    models = configured_models(ROOT / "litellm_config.yaml")
    assert {"fake-small", "fake-multi", "byok-only", "unpriced-model"} <= models
    metrics = Metrics(models)
    assert (metrics.model("fake-small"), metrics.model("someone/typed-this"), metrics.model(None)) == (
        "fake-small", "other", "other")
    metrics.charged("fake-small", 11, 3, 250)
    metrics.charged("typo-model", 1, 1, 7)
    text = metrics.render()[0].decode()
    assert 'creditgate_tokens_total{kind="prompt",model="fake-small"} 11.0' in text
    assert 'creditgate_credits_charged_millicredits_total{model="other"} 7.0' in text
    assert configured_models(Path("/nonexistent.yaml")) == frozenset()


def test_settlement_hook_counts_posted_tokens_once() -> None:
    metrics = Metrics({"fake-small"})
    done = Settlement(prompt_tokens=5, completion_tokens=7, charge=300, list_price=300, usage_source="provider",
                      model="fake-small", provider="openai", deployment="fake-small-1")
    metrics.settled("posted", done)
    metrics.settled("already_settled", done)
    metrics.settled("voided", None)
    text = metrics.render()[0].decode()
    assert 'creditgate_tokens_total{kind="completion",model="fake-small"} 7.0' in text
    assert 'creditgate_credits_charged_millicredits_total{model="fake-small"} 300.0' in text
    assert 'creditgate_settlements_total{outcome="already_settled"} 1.0' in text
    assert 'creditgate_settlements_total{outcome="voided"} 1.0' in text
