"""Liveness, readiness, the schema gate, the start-up checks and the metrics endpoint.

`/healthz` answers while the process serves requests. `/readyz` checks LiteLLM's
`/health/liveliness` (never `/health`, which makes a paid call to every deployment: litellm.md §1)
and every ready check the composition root adds (PostgreSQL, the schema version, Redis); 503 names
what failed. Why it failed is shown only as our own words (a `NotReady` message such as "schema at
0003_admin.sql, this release needs 0005_grant_expiry.sql ...: run `creditgate migrate`", or the
exception's class name), never an exception's text, which could carry a DSN. A check's change of
state is logged once, not at every probe.

`Schema` keeps what this replica knows of the database's schema: until `creditgate migrate` has
applied every migration of this release, `SchemaGate` answers every route that reads the database
503 `ledger_unavailable` (an older schema would run old SQL functions under new code), /readyz says
what to run, and the state is re-read every few seconds, so the replica becomes ready once migrated
without a restart.

`preflight()` runs before `creditgate serve` starts its workers: PostgreSQL unreachable is one line
naming CREDITGATE_DATABASE_URL and a non-zero exit, after waiting up to
CREDITGATE_STARTUP_WAIT_SECONDS (a sidecar's database may come up a few seconds after the gateway);
an older schema (logged once by `Schema`) and an unreachable Redis do not stop it (not ready until
migrated; without Redis, keys are read from PostgreSQL and rate limits are not enforced, as at runtime).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.config.settings import Settings
from proxy.db.migrate import SchemaState, schema_state
from proxy.db.pool import Database, dsn_target, reason, wait_for_postgres
from proxy.errors import ProxyError
from proxy.ops.logs import request_info
from proxy.ops.metrics import Metrics
from proxy.tasks import cancel

# A check raises when not ready; it may return "degraded" for a dependency the gateway can do without
# (Redis: keys are then read from PostgreSQL, money is unaffected), reported but not failing readiness.
ReadyCheck = Callable[[], Awaitable[str | None]]
log = logging.getLogger("creditgate.health")

# routes that never read the database: served whatever the schema
UNGATED = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})


class NotReady(Exception):
    """Raised by a ready check: `str()` is shown in /readyz's `details` (our words, never a secret)."""


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


class Readiness:
    """GET /readyz: 200 when every check (LiteLLM, PostgreSQL, Redis: each named by its function) answers
    within `timeout` seconds, else 503. `{"status", "checks": {name: "ok"|"degraded"|...|"failed"},
    "details": {name: why}}` (details only for checks that said why)."""

    def __init__(self, checks: Sequence[ReadyCheck], timeout: float = 2.0) -> None:
        self.checks = list(checks)
        self.timeout = timeout
        self._last: dict[str, str] = {}  # each check's last status, to log changes only

    async def _run(self, name: str, check: ReadyCheck) -> tuple[str, str, str | None]:
        try:
            status, detail = (await asyncio.wait_for(check(), self.timeout)) or "ok", None
        except NotReady as exc:
            status, detail = "failed", str(exc)
        except TimeoutError:
            status, detail = "failed", f"no answer within {self.timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; its text is not shown
            status, detail = "failed", reason(exc)
        self._changed(name, status, detail)
        return name, status, detail

    def _changed(self, name: str, status: str, detail: str | None) -> None:
        before = self._last.get(name, "ok")
        self._last[name] = status
        if status == before:
            return
        if status == "failed":
            log.warning("readiness check failed", extra={"check": name, "detail": detail})
        else:
            log.info("readiness check %s", status, extra={"check": name})

    async def endpoint(self, _: Request) -> Response:
        named = [(getattr(c, "__name__", f"check{i}"), c) for i, c in enumerate(self.checks)]
        results = await asyncio.gather(*(self._run(n, c) for n, c in named))
        ready = all(status != "failed" for _, status, _ in results)
        body: dict[str, object] = {"status": "ready" if ready else "unavailable",
                                   "checks": {name: status for name, status, _ in results}}
        details = {name: detail for name, _, detail in results if detail}
        if details:
            body["details"] = details
        return JSONResponse(body, status_code=200 if ready else 503)


class Schema:
    """The database schema as this replica last read it. A `Part` (opened after the database): reads it
    once, then every `recheck_seconds` until it is current (a schema never goes back). Its `schema`
    method is the /readyz check of that name."""

    def __init__(self, database: Database, recheck_seconds: float = 2.0) -> None:
        self._database = database
        self._recheck = recheck_seconds
        self.state: SchemaState | None = None  # None: not read yet (the database may be down)
        self._task: asyncio.Task[None] | None = None

    @property
    def behind(self) -> bool:
        """Known to be older than this release (unknown counts as not behind: the stores answer for it)."""
        return self.state is not None and not self.state.current

    async def read(self) -> SchemaState:
        async with self._database.acquire(timeout=2.0) as conn:
            state = await schema_state(conn)
        if self.state is None or state != self.state:
            (log.info if state.current else log.error)(state.describe(), extra={"check": "schema"})
        self.state = state
        return state

    async def schema(self) -> str | None:
        """The ready check: fails with what to run while migrations are pending."""
        state = await self.read()
        if not state.current:
            raise NotReady(state.describe())
        return "newer" if state.unknown else None

    async def open(self) -> None:
        with contextlib.suppress(Exception):  # unreachable now: the stores and /readyz say so
            await self.read()
        if self.state is None or self.behind:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="creditgate-schema")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel(task)

    async def _watch(self) -> None:
        while self.state is None or self.behind:
            await asyncio.sleep(self._recheck)
            with contextlib.suppress(Exception):
                await self.read()


class SchemaGate:
    """ASGI middleware: while the schema is known to be behind, every route but health, metrics and the
    API description is 503 `ledger_unavailable` (the contract's JSON), before anything reads the database."""

    def __init__(self, app: ASGIApp, schema: Schema) -> None:
        self.app = app
        self.schema = schema

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.schema.behind or _ungated(scope["path"]):
            await self.app(scope, receive, send)
            return
        err = ProxyError.ledger_unavailable()
        request_info(scope).error = err.code
        body = err.to_bytes()
        await send({"type": "http.response.start", "status": err.status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _ungated(path: str) -> bool:
    return path in UNGATED or path.startswith("/docs/")


async def preflight(settings: Settings) -> None:
    """Before serving: wait for PostgreSQL (raises `StartupError`, one line), then log once when Redis
    cannot be reached (degraded, not fatal). The schema is read by each worker (`Schema`)."""
    wait = settings.startup_wait_seconds

    def waiting(line: str) -> None:
        log.warning(f"{line}; waiting up to {wait:g} s (CREDITGATE_STARTUP_WAIT_SECONDS)")

    await wait_for_postgres(settings.database_url.reveal(), wait, on_wait=waiting)
    await _check_redis(settings)


async def _check_redis(settings: Settings) -> None:
    url = settings.redis_url.reveal()
    client = Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001 - degraded, never fatal: money does not depend on Redis
        log.warning(f"cannot reach Redis at CREDITGATE_REDIS_URL ({dsn_target(url)}): {_redis_reason(exc)}; "
                    "serving without it: API keys are read from PostgreSQL on every request and rate limits "
                    "are not enforced (creditgate_ratelimit_unenforced_total) until it is back")
    finally:
        await client.aclose()


def _redis_reason(exc: BaseException) -> str:
    """redis-py wraps the socket error in its ConnectionError; the cause says what happened."""
    cause = exc.__cause__ or exc.__context__
    return reason(cause if isinstance(cause, OSError) else exc)


def metrics_endpoint(metrics: Metrics) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(_: Request) -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return endpoint
