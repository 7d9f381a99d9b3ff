"""Settings: a frozen value built from an explicit mapping (the environment by default).

`Settings.from_env()` validates everything at once and raises `ConfigError` whose message has one
line per mistake, each naming the variable. Secrets are `Secret`s: their repr never shows them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, urlsplit


class ConfigError(Exception):
    """Bad or missing configuration; `str()` is one line per problem."""


class StartupError(Exception):
    """A dependency the gateway cannot serve without is unreachable at start-up; `str()` is one line that
    names the variable to check and never a secret (proxy/db/pool.py, `creditgate serve`)."""


class Secret:
    """A string that never shows itself in repr/str; call `reveal()` where it is really needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: Secret
    redis_url: Secret
    upstream_url: str
    upstream_key: Secret
    admin_token: Secret
    byok_keys: tuple[Secret, ...]
    litellm_config: Path
    policy_config: Path
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 16 * MIB
    upstream_timeout_seconds: float = 600.0
    upstream_connect_timeout_seconds: float = 10.0
    nonstream_drain_seconds: float = 120.0
    drain_seconds: float = 25.0  # SIGTERM: requests in flight are cut this long after it (proxy/ops/drain.py)
    unready_grace_seconds: float = 5.0  # SIGTERM: new requests are still served this long, while not ready
    log_level: str = "INFO"
    spool_dir: Path = Path("creditgate-spool")  # settlements an unreachable ledger could not take (ledger/spool.py)
    startup_wait_seconds: float = 30.0  # how long `serve` waits for PostgreSQL before giving up
    otlp_endpoint: str | None = None  # OTLP/HTTP collector base URL; traces are exported only when set
    config_poll_seconds: float = 0.0  # re-read both config files when they change, checked this often (0: SIGHUP only)
    ratelimit_timeout_seconds: float = 0.1  # a slow or absent Redis delays a request this long, then it passes
    # usage export (proxy/export/): events POSTed to export_url, signed with export_secret when set
    export_url: Secret | None = None  # may carry a token in its path or query: never logged
    export_secret: Secret | None = None
    export_timeout_seconds: float = 10.0
    export_max_attempts: int = 12  # then the event is dead-lettered
    export_backoff_seconds: float = 1.0  # doubled per failed attempt, jittered
    export_backoff_max_seconds: float = 600.0
    export_batch: int = 100
    export_retention_seconds: float = 7 * 86400.0  # delivered events are deleted this long after delivery

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                problems.append(f"{name} is required but not set")
            return value

        def url(name: str, schemes: tuple[str, ...]) -> str:
            value = required(name)
            if value and urlsplit(value).scheme not in schemes:
                problems.append(f"{name} must be a URL with scheme {' or '.join(schemes)}")
            return value

        def number(name: str, default: float, *, integer: bool, minimum: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = int(raw) if integer else float(raw)
            except ValueError:
                problems.append(f"{name} must be {'an integer' if integer else 'a number'}, got {raw!r}")
                return default
            if value < minimum:
                problems.append(f"{name} must be at least {minimum:g}, got {raw!r}")
                return default
            return value

        def path(name: str) -> Path:
            value = required(name)
            if value and not Path(value).is_file():
                problems.append(f"{name} points to {value!r}, which is not a readable file")
            return Path(value)

        database_url = url("CREDITGATE_DATABASE_URL", ("postgres", "postgresql"))
        redis_url = url("CREDITGATE_REDIS_URL", ("redis", "rediss", "unix"))
        upstream_url = url("CREDITGATE_UPSTREAM_URL", ("http", "https")).rstrip("/")
        upstream_key = required("CREDITGATE_UPSTREAM_KEY")
        admin_token = required("CREDITGATE_ADMIN_TOKEN")
        if admin_token and len(admin_token) < 16:
            problems.append("CREDITGATE_ADMIN_TOKEN must be at least 16 characters")
        byok_raw = required("CREDITGATE_BYOK_KEYS")
        byok_keys = tuple(Secret(k.strip()) for k in byok_raw.split(",") if k.strip())
        if byok_raw and not _fernet_keys_valid(byok_keys):
            problems.append("CREDITGATE_BYOK_KEYS must be comma-separated Fernet keys (32 url-safe base64 bytes)")
        litellm_config = path("CREDITGATE_LITELLM_CONFIG")
        policy_config = path("CREDITGATE_POLICY_CONFIG")
        port = number("CREDITGATE_PORT", 8080, integer=True, minimum=1)
        if port > 65535:
            problems.append("CREDITGATE_PORT must be at most 65535")
        settings = cls(
            database_url=Secret(database_url),
            redis_url=Secret(redis_url),
            upstream_url=upstream_url,
            upstream_key=Secret(upstream_key),
            admin_token=Secret(admin_token),
            byok_keys=byok_keys,
            litellm_config=litellm_config,
            policy_config=policy_config,
            host=env.get("CREDITGATE_HOST", "").strip() or "127.0.0.1",
            port=int(port),
            workers=int(number("CREDITGATE_WORKERS", 1, integer=True, minimum=1)),
            max_body_bytes=int(number("CREDITGATE_MAX_BODY_BYTES", 16 * MIB, integer=True, minimum=1)),
            upstream_timeout_seconds=number("CREDITGATE_UPSTREAM_TIMEOUT_SECONDS", 600.0, integer=False, minimum=0.1),
            upstream_connect_timeout_seconds=number(
                "CREDITGATE_UPSTREAM_CONNECT_TIMEOUT_SECONDS", 10.0, integer=False, minimum=0.1
            ),
            nonstream_drain_seconds=number("CREDITGATE_NONSTREAM_DRAIN_SECONDS", 120.0, integer=False, minimum=0),
            drain_seconds=number("CREDITGATE_DRAIN_SECONDS", 25.0, integer=False, minimum=0),
            unready_grace_seconds=number("CREDITGATE_UNREADY_GRACE_SECONDS", 5.0, integer=False, minimum=0),
            log_level=(env.get("CREDITGATE_LOG_LEVEL", "").strip() or "INFO").upper(),
            spool_dir=_spool_dir(env.get("CREDITGATE_SPOOL_DIR", "").strip(), problems),
            startup_wait_seconds=number("CREDITGATE_STARTUP_WAIT_SECONDS", 30.0, integer=False, minimum=0),
            otlp_endpoint=_otlp_endpoint(env.get("CREDITGATE_OTLP_ENDPOINT", "").strip(), problems),
            config_poll_seconds=number("CREDITGATE_CONFIG_POLL_SECONDS", 0.0, integer=False, minimum=0),
            ratelimit_timeout_seconds=number("CREDITGATE_RATELIMIT_TIMEOUT_SECONDS", 0.1, integer=False, minimum=0.001),
            export_url=_export_url(env.get("CREDITGATE_EXPORT_URL", "").strip(), problems),
            export_secret=Secret(env["CREDITGATE_EXPORT_SECRET"].strip())
            if env.get("CREDITGATE_EXPORT_SECRET", "").strip() else None,
            export_timeout_seconds=number("CREDITGATE_EXPORT_TIMEOUT_SECONDS", 10.0, integer=False, minimum=0.1),
            export_max_attempts=int(number("CREDITGATE_EXPORT_MAX_ATTEMPTS", 12, integer=True, minimum=1)),
            export_backoff_seconds=number("CREDITGATE_EXPORT_BACKOFF_SECONDS", 1.0, integer=False, minimum=0.01),
            export_backoff_max_seconds=number("CREDITGATE_EXPORT_BACKOFF_MAX_SECONDS", 600.0, integer=False,
                                              minimum=0.01),
            export_batch=int(number("CREDITGATE_EXPORT_BATCH", 100, integer=True, minimum=1)),
            export_retention_seconds=number("CREDITGATE_EXPORT_RETENTION_SECONDS", 7 * 86400.0, integer=False,
                                            minimum=0),
        )
        if settings.export_secret is not None and settings.export_url is None:
            problems.append("CREDITGATE_EXPORT_SECRET is set but CREDITGATE_EXPORT_URL is not")
        if settings.unready_grace_seconds > settings.drain_seconds:
            problems.append("CREDITGATE_UNREADY_GRACE_SECONDS must not exceed CREDITGATE_DRAIN_SECONDS")
        if problems:
            raise ConfigError("\n".join(problems))
        return settings


def _http_url(value: str) -> SplitResult | None:
    """`value` split, when it is an http(s) URL with a host and a valid port; else None."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port outside 0-65535 or not a number
    except ValueError:
        return None
    return parts if parts.scheme in ("http", "https") and parts.hostname else None


def _otlp_endpoint(value: str, problems: list[str]) -> str | None:
    """The collector's base URL (spans go to `{value}/v1/traces`), or None when tracing export is off."""
    if not value:
        return None
    parts = _http_url(value)
    if parts is None or parts.query or parts.fragment:
        problems.append("CREDITGATE_OTLP_ENDPOINT must be an http or https URL without a query, e.g. "
                        "http://127.0.0.1:4318")
        return None
    if parts.username or parts.password:
        problems.append("CREDITGATE_OTLP_ENDPOINT must not carry credentials")
        return None
    return value.rstrip("/")


def _export_url(value: str, problems: list[str]) -> Secret | None:
    """The receiver of usage events (None: export off). Only its scheme is named in a mistake: a token in
    the URL must not reach a log."""
    if not value:
        return None
    if _http_url(value) is None:
        problems.append("CREDITGATE_EXPORT_URL must be an http or https URL")
        return None
    return Secret(value)


def _spool_dir(value: str, problems: list[str]) -> Path:
    """The settlement spool's directory (created at start-up if missing); default `creditgate-spool` in the
    working directory."""
    path = Path(value or "creditgate-spool")
    if path.exists() and not path.is_dir():
        problems.append(f"CREDITGATE_SPOOL_DIR points to {value!r}, which is not a directory")
    return path


def _fernet_keys_valid(keys: tuple[Secret, ...]) -> bool:
    import base64
    import binascii

    if not keys:
        return False
    for key in keys:
        try:
            if len(base64.urlsafe_b64decode(key.reveal().encode())) != 32:
                return False
        except (binascii.Error, ValueError):
            return False
    return True
