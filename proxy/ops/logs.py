"""JSON-lines logs on stderr, and the outermost middleware: request id, trace, access line, request metrics.

`AccessLog` gives every HTTP request a `RequestInfo` in `scope["creditgate"]` (request id: the
client's safe `X-Request-Id` or a generated `req_…`; its trace, continuing a valid W3C `traceparent`),
adds `x-request-id` to every response (errors, 404s and health included) and, when the request is
really finished (for a stream: after its end and its settlement), writes one access line and counts the
request. The access line: request_id, trace_id, method, route, status, duration_ms, and what is known
of the request: error (the contract's code, e.g. org_pool_exhausted vs user_allocation_exhausted),
org_id, user_id, key_id (the key's id, never the key), model (asked) and model_served, deployment,
power_level, stream, prompt_tokens, completion_tokens, held_millicredits, charged_millicredits,
usage_source, settlement (posted, voided, failed, ...), upstream_ms and gateway_ms. Never a key, a
body, a header or a raw query.

`log_started` writes the start-up line: version, host, port, workers, models, power levels, pid.
A start-up failure the gateway explains (`StartupError`: PostgreSQL unreachable) is logged as its one
line, not as Starlette's traceback of the lifespan.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.config.settings import Settings, StartupError
from proxy.errors import ProxyError
from proxy.ops.metrics import Metrics
from proxy.ops.tracing import Trace, Tracer

_HANDLER_NAME = "creditgate-json"
_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


# a "safe token": what a client may choose for its request id, and for its X-Tags (proxy/gateway/attribution.py)
SAFE_CHARS = "A-Za-z0-9._:-"  # a regular expression's character class, without its brackets
_SAFE_REQUEST_ID = re.compile(f"[{SAFE_CHARS}]{{1,64}}".encode())


def request_id(client_value: bytes | None) -> tuple[str, bool]:
    """The client's `X-Request-Id` when it is a safe token (`[A-Za-z0-9._:-]`, 1-64 chars), else a
    generated `req_` + 24 hex digits. The flag says whether the client's value was kept."""
    if client_value is not None and _SAFE_REQUEST_ID.fullmatch(client_value):
        return client_value.decode("ascii"), True
    return "req_" + secrets.token_hex(12), False


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, any `extra` fields, and exc when present."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of the record (it may be replaced after start-up)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the `creditgate` loggers (at `level`) and for everything else that
    reaches the root logger (uvicorn's and aiohttp's warnings). Idempotent."""
    ours = logging.getLogger("creditgate")
    ours.setLevel(level)
    ours.propagate = False
    for logger in (ours, logging.getLogger()):
        if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
            handler = _Stderr()
            handler.set_name(_HANDLER_NAME)
            handler.setFormatter(JsonFormatter())
            logger.addHandler(handler)


class RequestInfo:
    """What the access line needs, filled in as the request goes (the passthrough sets the rest from its
    RequestContext when the request is finished; an error handler sets `error`)."""

    __slots__ = ("charged", "completion_tokens", "deployment", "error", "from_client", "gateway_seconds", "held",
                 "key_id", "model", "model_served", "org_id", "power_level", "prompt_tokens", "request_id", "route",
                 "settlement", "status", "stream", "trace", "upstream_seconds", "usage_source", "user_id")

    def __init__(self, request_id_value: str, from_client: bool, trace: Trace | None = None) -> None:
        self.request_id = request_id_value
        self.from_client = from_client
        self.trace = trace or _UNTRACED.begin([])
        self.route: str | None = None
        self.status = 0
        self.error: str | None = None
        self.org_id: str | None = None
        self.user_id: str | None = None
        self.key_id: str | None = None
        self.model: str | None = None  # as the client asked
        self.model_served: str | None = None  # the LiteLLM model name it was sent as
        self.deployment: str | None = None
        self.power_level: str | None = None
        self.stream: bool | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.held: int | None = None
        self.charged: int | None = None
        self.usage_source: str | None = None
        self.settlement: str | None = None
        self.upstream_seconds: float | None = None
        self.gateway_seconds: float | None = None


_UNTRACED = Tracer()
_FIELDS = ("error", "org_id", "user_id", "key_id", "model", "model_served", "deployment", "power_level", "stream",
           "prompt_tokens", "completion_tokens")
_MONEY = (("held", "held_millicredits"), ("charged", "charged_millicredits"), ("usage_source", "usage_source"),
          ("settlement", "settlement"))


def request_info(scope: Scope, tracer: Tracer = _UNTRACED) -> RequestInfo:
    """The request's RequestInfo, created here when no AccessLog middleware ran (bench, tests)."""
    info = scope.get("creditgate")
    if info is None:
        raw, parents = None, []
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                raw = v
            elif k == b"traceparent":
                parents.append(v)
        info = scope["creditgate"] = RequestInfo(*request_id(raw), tracer.begin(parents))
    return info


def access_line(info: RequestInfo, method: str, route: str, seconds: float, now: float) -> dict[str, Any]:
    """The access line's fields: always the request's identity and outcome, then whatever is known."""
    line: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
        "level": "info", "logger": "creditgate.access", "msg": "request", "request_id": info.request_id,
        "trace_id": info.trace.trace_id, "method": method, "route": route, "status": info.status or 500,
        "duration_ms": round(seconds * 1000, 3),
    }
    for name in _FIELDS:
        value = getattr(info, name)
        if value is not None:
            line[name] = value
    for name, key in _MONEY:
        value = getattr(info, name)
        if value is not None:
            line[key] = value
    if info.upstream_seconds is not None:
        line["upstream_ms"] = round(info.upstream_seconds * 1000, 3)
    if info.gateway_seconds is not None:
        line["gateway_ms"] = round(info.gateway_seconds * 1000, 3)
    return line


def _write_access(info: RequestInfo, method: str, route: str, seconds: float) -> None:
    """The access line, in JsonFormatter's shape, written straight to stderr: the logging machinery
    (record, caller lookup, lock, formatter) cost ~80 µs per request, as much as the proxying itself."""
    try:
        sys.stderr.write(orjson.dumps(access_line(info, method, route, seconds, time.time())).decode() + "\n")
    except (OSError, ValueError):  # a closed or broken stderr must not fail the request (logging does the same)
        pass


def _trace_attributes(info: RequestInfo, method: str, route: str) -> dict[str, str | int | bool | None]:
    """The root span's attributes: the route and outcome, models, the org; never a key or a body."""
    return {"http.request.method": method, "http.route": route, "http.response.status_code": info.status or 500,
            "creditgate.request_id": info.request_id, "creditgate.error": info.error,
            "creditgate.org_id": info.org_id, "creditgate.model": info.model,
            "creditgate.model_served": info.model_served, "creditgate.power_level": info.power_level,
            "creditgate.stream": info.stream, "creditgate.charged_millicredits": info.charged}


def log_started(settings: Settings, *, models: int, power_levels: Sequence[str], tracing: bool) -> None:
    """The start-up line of a worker, once it is ready to serve."""
    try:
        version = metadata.version("creditgate")
    except metadata.PackageNotFoundError:
        version = "unknown"
    logging.getLogger("creditgate.app").info("creditgate started", extra={
        "version": version, "host": settings.host, "port": settings.port, "workers": settings.workers,
        "models": models, "power_levels": list(power_levels), "tracing": tracing, "pid": os.getpid()})


class AccessLog:
    """Pure ASGI middleware; wraps every HTTP request of the app."""

    def __init__(self, app: ASGIApp, metrics: Metrics, tracer: Tracer = _UNTRACED) -> None:
        self.app = app
        self.metrics = metrics
        self.tracer = tracer
        self.log = logging.getLogger("creditgate.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, _explained_startup(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info = request_info(scope, self.tracer)
        header = (b"x-request-id", info.request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = message["status"]
                headers = list(message.get("headers", ()))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append(header)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # a bug: still the contract's JSON, with the request id, and the traceback logged
            self.log.exception("unhandled error", extra={"request_id": info.request_id})
            info.error = info.error or "internal_error"
            if info.status:  # the answer had begun: the server closes the connection
                raise
            await _internal_error(send_with_id)
        finally:
            route = scope.get("route")
            label = info.route or (getattr(route, "path", None) if route is not None else None) or "unmatched"
            seconds = time.perf_counter() - started
            self.metrics.request(label, info.status or 500, seconds)
            method = scope["method"]
            if info.trace.recording:
                self.tracer.finish(info.trace, f"{method} {label}", (info.status or 500) >= 500,
                                   _trace_attributes(info, method, label))
            if self.log.isEnabledFor(logging.INFO):
                _write_access(info, method, label, seconds)


async def _internal_error(send: Send) -> None:
    body = ProxyError(500, "server_error", "internal_error", "The gateway failed to process the request.").to_bytes()
    await send({"type": "http.response.start", "status": 500, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _explained_startup(send: Send) -> Send:
    """The lifespan's `send`, with a start-up failure we explain (`StartupError`) reported as its one line
    instead of the traceback Starlette puts in the message. Starlette sends `lifespan.startup.failed` from
    inside its `except` block, so the exception being handled is the one that failed the start-up."""

    async def explained(message: Message) -> None:
        if message["type"] == "lifespan.startup.failed":
            exc = sys.exception()
            if isinstance(exc, StartupError):
                message = {**message, "message": f"creditgate: {exc}"}
        await send(message)

    return explained
