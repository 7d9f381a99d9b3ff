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


def test_the_otlp_endpoint_is_an_http_url_and_optional() -> None:
    assert Settings.from_env(GOOD).otlp_endpoint is None
    assert Settings.from_env({**GOOD, "CREDITGATE_OTLP_ENDPOINT": " http://collector:4318/ "}).otlp_endpoint == (
        "http://collector:4318")
    assert Settings.from_env({**GOOD, "CREDITGATE_OTLP_ENDPOINT": "https://otel.example/base"}).otlp_endpoint == (
        "https://otel.example/base")
    for bad, line in (("collector:4318", "must be an http or https URL"), ("grpc://collector:4317", "must be an "),
                      ("http://collector:99999", "must be an "), ("http://c:4318/?token=x", "must be an "),
                      ("http://user:pw@collector:4318", "must not carry credentials")):
        with pytest.raises(ConfigError) as raised:
            Settings.from_env({**GOOD, "CREDITGATE_OTLP_ENDPOINT": bad})
        assert str(raised.value).startswith(f"CREDITGATE_OTLP_ENDPOINT {line}"), bad
        assert "pw@" not in str(raised.value) and "token=x" not in str(raised.value)


def test_serve_waits_for_postgres_a_bounded_time() -> None:
    assert Settings.from_env(GOOD).startup_wait_seconds == 30.0
    assert Settings.from_env({**GOOD, "CREDITGATE_STARTUP_WAIT_SECONDS": "0"}).startup_wait_seconds == 0.0
    with pytest.raises(ConfigError, match="^CREDITGATE_STARTUP_WAIT_SECONDS must be at least 0, got '-1'$"):
        Settings.from_env({**GOOD, "CREDITGATE_STARTUP_WAIT_SECONDS": "-1"})


def test_config_files_are_polled_only_when_asked() -> None:
    assert Settings.from_env(GOOD).config_poll_seconds == 0.0  # SIGHUP only
    assert Settings.from_env({**GOOD, "CREDITGATE_CONFIG_POLL_SECONDS": "5"}).config_poll_seconds == 5.0
    with pytest.raises(ConfigError, match="^CREDITGATE_CONFIG_POLL_SECONDS must be a number, got 'often'$"):
        Settings.from_env({**GOOD, "CREDITGATE_CONFIG_POLL_SECONDS": "often"})


def test_the_drain_on_sigterm_is_configured_in_seconds() -> None:
    settings = Settings.from_env(GOOD)
    assert (settings.drain_seconds, settings.unready_grace_seconds) == (25.0, 5.0)  # below Kubernetes' 30 s
    tuned = Settings.from_env({**GOOD, "CREDITGATE_DRAIN_SECONDS": "10", "CREDITGATE_UNREADY_GRACE_SECONDS": "0"})
    assert (tuned.drain_seconds, tuned.unready_grace_seconds) == (10.0, 0.0)
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, "CREDITGATE_DRAIN_SECONDS": "3", "CREDITGATE_UNREADY_GRACE_SECONDS": "5"})
    assert str(raised.value) == "CREDITGATE_UNREADY_GRACE_SECONDS must not exceed CREDITGATE_DRAIN_SECONDS"
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, "CREDITGATE_DRAIN_SECONDS": "-1", "CREDITGATE_UNREADY_GRACE_SECONDS": "soon"})
    assert str(raised.value).splitlines() == ["CREDITGATE_DRAIN_SECONDS must be at least 0, got '-1'",
                                              "CREDITGATE_UNREADY_GRACE_SECONDS must be a number, got 'soon'"]


def test_the_rate_limit_timeout_is_configured_in_seconds() -> None:
    assert Settings.from_env(GOOD).ratelimit_timeout_seconds == 0.1  # a slow Redis costs a request 100 ms
    assert Settings.from_env({**GOOD, "CREDITGATE_RATELIMIT_TIMEOUT_SECONDS": "0.25"}).ratelimit_timeout_seconds == 0.25
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, "CREDITGATE_RATELIMIT_TIMEOUT_SECONDS": "0"})
    assert str(raised.value) == "CREDITGATE_RATELIMIT_TIMEOUT_SECONDS must be at least 0.001, got '0'"


def test_the_spool_directory_defaults_to_the_working_directory(tmp_path: Path) -> None:
    assert Settings.from_env(GOOD).spool_dir == Path("creditgate-spool")
    assert Settings.from_env({**GOOD, "CREDITGATE_SPOOL_DIR": f" {tmp_path}/spool "}).spool_dir == tmp_path / "spool"
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({**GOOD, "CREDITGATE_SPOOL_DIR": str(tmp_path / "file")})
    assert str(raised.value) == f"CREDITGATE_SPOOL_DIR points to '{tmp_path}/file', which is not a directory"


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


def test_the_usage_export_is_off_by_default_and_its_url_and_secret_stay_hidden() -> None:
    off = Settings.from_env(GOOD)
    assert (off.export_url, off.export_secret, off.export_timeout_seconds, off.export_max_attempts) == (
        None, None, 10.0, 12)
    on = Settings.from_env({**GOOD, "CREDITGATE_EXPORT_URL": "https://billing.test/events?token=url-token-1",
                            "CREDITGATE_EXPORT_SECRET": " whsec-secret-1 ", "CREDITGATE_EXPORT_MAX_ATTEMPTS": "3",
                            "CREDITGATE_EXPORT_BACKOFF_SECONDS": "0.5", "CREDITGATE_EXPORT_RETENTION_SECONDS": "0"})
    assert on.export_url is not None and on.export_url.reveal() == "https://billing.test/events?token=url-token-1"
    assert on.export_secret is not None and on.export_secret.reveal() == "whsec-secret-1"
    assert (on.export_max_attempts, on.export_backoff_seconds, on.export_retention_seconds) == (3, 0.5, 0.0)
    assert "url-token-1" not in repr(on) and "whsec-secret-1" not in repr(on)
    bad = {**GOOD, "CREDITGATE_EXPORT_URL": "ftp://billing.test/?token=url-token-2",
           "CREDITGATE_EXPORT_SECRET": "whsec-secret-2", "CREDITGATE_EXPORT_MAX_ATTEMPTS": "0"}
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(bad)
    assert str(raised.value).splitlines() == [
        "CREDITGATE_EXPORT_URL must be an http or https URL",
        "CREDITGATE_EXPORT_MAX_ATTEMPTS must be at least 1, got '0'",
        "CREDITGATE_EXPORT_SECRET is set but CREDITGATE_EXPORT_URL is not",
    ]
    assert "url-token-2" not in str(raised.value) and "whsec-secret-2" not in str(raised.value)
