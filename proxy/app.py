"""The composition root: `create_app()` builds the whole gateway, its lifespan opens it; nothing happens at
import and nothing is attached after construction.

Routes (CONTRACT.md, Client API), under `/v1` and `/api/v1/llm`: POST chat/completions, completions,
embeddings, images/generations, responses (the billed passthrough, raw ASGI); the caller's and the operator's
JSON APIs and the `/console` web UI; GET models and models/{id}; `/healthz`, `/readyz`, `/metrics`,
`/openapi.json` and `/docs`.
`routes` given to create_app come first, so a route there replaces a default one. Any other route or method is 404
`route_not_found` (a trailing slash included): nothing passes through unbilled.

Everything that holds a connection or a task is a `Part` (`open()` / `close()`); the lifespan opens them
in order on one exit stack, so a part that fails to open closes every part opened before it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from policies import default_policies
from policies.auth import Authenticate
from policies.org import ResolveOrg
from policies.ratelimit import redis_client as rate_limit_redis
from proxy.admin.routes import admin_routes
from proxy.api.openapi import openapi_routes
from proxy.caller.common import checked, identify_with
from proxy.caller.probe import litellm_probe
from proxy.caller.responses import response_routes
from proxy.caller.routes import caller_routes
from proxy.config.catalogue import Catalogue, check_policy, load_catalogue
from proxy.config.live import LiveConfig, Snapshot
from proxy.config.modelinfo import InfoRow, ModelInfoError
from proxy.config.policy import PolicyConfig, load_policy
from proxy.config.reload import Reloader
from proxy.config.settings import Settings
from proxy.console.routes import console_routes
from proxy.db.pool import Database
from proxy.directory.crypto import KeyBox
from proxy.directory.keycache import KeyCache
from proxy.directory.membership_cache import CachedMemberships
from proxy.directory.pg import PgDirectory
from proxy.directory.responses import PgResponseOwners
from proxy.errors import ProxyError
from proxy.export.alerts import PgAlerts
from proxy.export.deliver import ExportConfig, Exporter
from proxy.export.outbox import PgOutbox
from proxy.gateway.context import Policy
from proxy.gateway.headers import client_response_headers
from proxy.gateway.params import check_forward_params
from proxy.gateway.passthrough import Passthrough
from proxy.gateway.tokens import TokenCounter
from proxy.gateway.upstream import Upstream
from proxy.ledger.pg import PgLedger
from proxy.ledger.replay import Replayer
from proxy.ledger.spool import Spool
from proxy.ledger.spool_entry import Entry, ledger_id
from proxy.ledger.sweeper import Sweeper
from proxy.ops.drain import Drain
from proxy.ops.gauges import Gauges
from proxy.ops.health import NotReady, Readiness, ReadyCheck, Schema, SchemaGate, healthz, metrics_endpoint
from proxy.ops.logs import AccessLog, configure_logging, log_started, request_info
from proxy.ops.metrics import Metrics, configured_models
from proxy.ops.tracing import OtlpExporter, Tracer

log = logging.getLogger("creditgate.app")
PREFIXES = ("/v1", "/api/v1/llm")
BILLED_ROUTES = ("chat/completions", "completions", "embeddings", "images/generations", "responses")


class Part(Protocol):
    """Something the lifespan opens before serving and closes after."""

    def open(self) -> Awaitable[None]: ...

    def close(self) -> Awaitable[None]: ...


@dataclass(frozen=True, slots=True)
class Step:
    """A `Part` from two callables (either may do nothing)."""

    open: Callable[[], Awaitable[None]]
    close: Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


def create_app(
    settings: Settings | None = None,
    *,
    policies: Sequence[Policy] | None = None,
    routes: Sequence[BaseRoute] = (),
    ready_checks: Sequence[ReadyCheck] = (),
    parts: Sequence[Part] = (),
) -> Starlette:
    """The gateway app. Without `policies` it is the whole product: the ledger and the directory on
    PostgreSQL, the key cache and the rate limits on Redis, the sweeper, the policy chain, the caller and
    admin routes (the configuration files are read now: a mistake stops start-up with one line per
    problem). Tests of the gateway core pass their own chain (and `parts`, opened after the upstream)."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    models = configured_models(settings.litellm_config)
    metrics = Metrics(models)
    upstream = Upstream(settings)
    # W3C trace context always; spans exported only to a configured collector (opened first, closed last)
    exporter = OtlpExporter(settings.otlp_endpoint, on_drop=metrics.spans_dropped) if settings.otlp_endpoint else None
    tracer = Tracer(exporter)
    gates: list[Middleware] = []
    levels: tuple[str, ...] = ()
    if policies is None:
        product = _billing(settings, upstream, metrics)
        policies, routes = product.chain, (*routes, *product.routes)
        ready_checks, parts = (*ready_checks, *product.checks), (*parts, *product.parts)
        gates, levels = [Middleware(SchemaGate, schema=product.schema)], product.power_levels
    chain = tuple(policies)
    # SIGTERM: not ready, serve on through the grace, then refuse, finish or cut, settle, exit 0
    drain = Drain(grace=settings.unready_grace_seconds, deadline=settings.drain_seconds)
    passthroughs = [Passthrough(route, upstream, settings, metrics, chain, drain) for route in BILLED_ROUTES]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            # the drain opens last (it takes over the signals once everything serves) and closes first; the
            # server stops only once it has drained, so every settlement is done before a part closes
            for part in (*((exporter,) if exporter else ()), upstream, *parts, drain):
                await part.open()
                stack.push_async_callback(part.close)
            log_started(settings, models=len(models), power_levels=levels, tracing=exporter is not None)
            yield

    table: list[BaseRoute] = list(routes)
    billed = [Route(f"{prefix}/{p.route}", p, methods=["POST"]) for prefix in PREFIXES for p in passthroughs]
    taken = {getattr(r, "path", None) for r in routes}
    fast = {r.path: r for r in billed if r.path not in taken}
    table += billed
    for prefix in PREFIXES:
        table += [Route(f"{prefix}/models", _models(upstream), methods=["GET"]),
                  Route(f"{prefix}/models/{{model_id:path}}", _models(upstream), methods=["GET"])]
    table += [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", Readiness((upstream.litellm, *ready_checks, drain.draining)).endpoint, methods=["GET"]),
        Route("/metrics", metrics_endpoint(metrics), methods=["GET"]),
    ]
    app = Starlette(
        routes=table,
        lifespan=lifespan,
        middleware=[Middleware(AccessLog, metrics=metrics, tracer=tracer), *gates,
                    Middleware(_BilledFastPath, routes=fast)],
        exception_handlers={HTTPException: _route_not_found, ProxyError: _proxy_error},
    )
    app.router.redirect_slashes = False  # a trailing slash is 404, never a redirect built from the client's Host
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.upstream = upstream
    app.state.drain = drain
    return app


@dataclass(frozen=True, slots=True)
class _Billing:
    chain: tuple[Policy, ...]
    routes: list[BaseRoute]
    checks: tuple[ReadyCheck, ...]
    parts: tuple[Part, ...]
    schema: Schema
    power_levels: tuple[str, ...]


def load_config(settings: Settings, info: Sequence[InfoRow] | None = None) -> tuple[PolicyConfig, Catalogue]:
    """The policy file and the model list (completed by LiteLLM's model `info` when read), checked against
    each other: at start-up and at every reload. `ConfigError` lists every mistake."""
    policy = load_policy(settings.policy_config)
    catalogue = load_catalogue(settings.litellm_config, info)
    check_policy(policy, catalogue)
    check_forward_params(policy)
    return policy, catalogue


def _billing(settings: Settings, upstream: Upstream, metrics: Metrics) -> _Billing:
    """The billing around the core, built (no I/O) for `create_app`."""
    policy, catalogue = load_config(settings)
    database = Database(settings.database_url.reveal(), max_size=16)
    # settlements the ledger cannot take during an outage wait on local disk; the replayer posts them after
    spool = Spool(settings.spool_dir, ledger_id(settings.database_url.reveal()), on_depth=metrics.set_spool_depth)
    # so does the void of a reserve whose answer was lost (PgLedger.on_lost_void)
    ledger = PgLedger(database, hold_ttl_seconds=float(policy.hold_ttl_seconds), on_lost_void=lambda org, rid:
                      spool.append(Entry.of(org, rid, None, {"failure": "reserve_outcome_unknown"})))
    live, reloader, catalogue_check = _live_config(settings, upstream, ledger, metrics, Snapshot.of(policy, catalogue))
    directory = PgDirectory(database)
    owners = PgResponseOwners(database)  # who may reach which stored /v1/responses answer
    keys = KeyCache(directory, settings.redis_url)
    keybox = KeyBox(settings.byok_keys)
    counter = TokenCounter()
    # usage export and budget alerts: the outbox the ledger's triggers fill, delivered by one loop per process
    outbox, alerts = PgOutbox(database), PgAlerts(database)
    exporter = Exporter(outbox, metrics, ExportConfig.of(settings))
    # the rate limits' client (short timeouts, no retries); also the readiness ping
    limits = rate_limit_redis(settings.redis_url.reveal(), timeout=settings.ratelimit_timeout_seconds)
    sweeper = Sweeper(ledger, float(policy.sweep_interval_seconds), on_expired=metrics.hold_expired)
    replayer = Replayer(spool, ledger, on_replayed=metrics.replayed)
    # the chain reads memberships through a one-second cache; reserve re-checks them authoritatively
    chain = default_policies(keys=keys, directory=CachedMemberships(directory), ledger=ledger, policy=policy,
                             catalogue=catalogue, keybox=keybox, counter=counter, record=metrics.settled,
                             on_overage=metrics.overage, balances=ledger.credits, redis=limits,
                             unenforced=metrics.ratelimit_skipped, spool=spool, live=live,
                             responses=owners)
    tiers, levels = [t.name for t in policy.tiers], [lv.name for lv in policy.power_levels]
    routes = [
        *caller_routes(identify=identify_with((Authenticate(keys), ResolveOrg(directory))), ledger=ledger,
                       directory=directory, config=live, keybox=keybox,
                       probe=litellm_probe(lambda: upstream.session, settings.upstream_url, settings.upstream_key),
                       created=int(time.time())),
        *response_routes(identify=checked(identify_with((Authenticate(keys), ResolveOrg(directory)))),
                         owners=owners, fetch=upstream.get),
        *admin_routes(directory, ledger, admin_token=settings.admin_token, lookup_key=keys.get,
                      on_revoke=keys.revoke, tiers=tiers, power_levels=levels, dead_letters=outbox,
                      alerts=alerts),
        *console_routes(directory, ledger, database, admin_token=settings.admin_token, lookup_key=keys.get,
                        tiers=tiers, power_levels=levels, alerts=alerts, on_revoke=keys.revoke),
        *openapi_routes(tiers=tiers, power_levels=levels),
    ]

    async def redis() -> str:
        """Redis down degrades (no revocation broadcast, keys read from PostgreSQL), it never stops billing."""
        try:
            await limits.ping()
        except Exception:  # noqa: BLE001 - reported as degraded, logged by the key cache
            return "degraded"
        return "ok"

    async def warm() -> None:
        await asyncio.to_thread(counter.warm)  # load the encoding now, not on the first request

    async def redis_ping() -> None:
        await limits.ping()

    gauge = Gauges(ledger, metrics, float(policy.sweep_interval_seconds),
                   {"redis": redis_ping, "litellm": upstream.litellm})
    schema = Schema(database)  # /readyz and the gate: an older schema is 503 until `creditgate migrate`
    parts: tuple[Part, ...] = (
        database,
        schema,
        Step(_nothing, ledger.close),  # opened with the database; flushes its queue before the pool closes
        reloader,  # stores the price table, reads LiteLLM's model info (retried), reloads on SIGHUP
        spool,  # closed after the last request's settlement: what it holds is on disk for the next process
        replayer,  # closed first: one last bounded replay while the ledger is still open
        Step(keys.start, keys.stop),
        Step(warm, _nothing),
        Step(_nothing, limits.aclose),
        Step(_start(sweeper), sweeper.stop),
        gauge,
        exporter,  # delivers the outbox (CREDITGATE_EXPORT_URL), counts budget alerts
    )
    return _Billing(chain, routes, (database.postgres, schema.schema, redis, catalogue_check), parts, schema,
                    tuple(levels))


def _live_config(settings: Settings, upstream: Upstream, ledger: PgLedger, metrics: Metrics,
                 first: Snapshot) -> tuple[LiveConfig, Reloader, ReadyCheck]:
    """The swappable configuration, what reloads it (proxy/config/reload.py) and its /readyz check. A
    reload reads the files as start-up does; what only a restart applies (the hold TTL and the sweep
    interval the ledger and the sweeper were started with) is said when a reload changes it."""
    live = LiveConfig(first)

    def load(info: Sequence[InfoRow] | None) -> Snapshot:
        policy, catalogue = load_config(settings, info)
        if (policy.hold_ttl_seconds, policy.sweep_interval_seconds) != (
                first.policy.hold_ttl_seconds, first.policy.sweep_interval_seconds):
            log.warning("hold_ttl_seconds and sweep_interval_seconds changes take effect at the next restart")
        return Snapshot.of(policy, catalogue)

    async def fetch() -> bytes:
        status, _, body = await upstream.get("/model/info", timeout=10.0)
        if status != 200:
            raise ModelInfoError(f"LiteLLM answered /model/info with {status}")
        return body

    async def register(snapshot: Snapshot) -> None:
        await ledger.record_price_version(snapshot.version, snapshot.prices)

    def serving(outcome: str, snapshot: Snapshot | None) -> None:
        metrics.config_reloaded(outcome)
        if snapshot is not None:
            metrics.config_serving(snapshot.version, snapshot.catalogue.complete, snapshot.catalogue.models)

    async def catalogue() -> str | None:
        """Not ready while models wait for LiteLLM's model info (they would be refused as not priced); a
        probe also asks for it at once, so the replica is ready soon after LiteLLM is."""
        current = live.current.catalogue
        if not current.complete or current.missing:
            reloader.nudge()
        if not current.complete:
            raise NotReady("LiteLLM's model info is not read yet: models without prices in the config are refused")
        return "incomplete" if current.missing else None

    metrics.config_serving(first.version, first.catalogue.complete, first.catalogue.models)
    reloader = Reloader(live, load, fetch=fetch, register=register, on_reload=serving,
                        watch=(settings.litellm_config, settings.policy_config),
                        poll_seconds=settings.config_poll_seconds)
    return live, reloader, catalogue


def _start(sweeper: Sweeper) -> Callable[[], Awaitable[None]]:
    async def start() -> None:
        sweeper.start()

    return start


class _BilledFastPath:
    """POSTs to the billed routes go straight to their raw ASGI endpoint. Starlette's router and
    exception layer would scan the route table per request and wrap every streamed chunk's `send`;
    everything else (and any other method on these paths) goes through Starlette as usual."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, Route]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        await route.app(scope, receive, send)


async def _route_not_found(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods alike (Starlette raises HTTPException 404/405)."""
    return await _proxy_error(request, ProxyError.route_not_found())


async def _proxy_error(request: Request, exc: Exception) -> Response:
    err = exc if isinstance(exc, ProxyError) else ProxyError.upstream_failed()
    request_info(request.scope).error = err.code  # for the access line
    return err.to_response()


def _models(upstream: Upstream) -> Callable[[Request], Awaitable[Response]]:
    """GET models or models/{id} from LiteLLM with its headers filtered (the lead may replace it)."""

    async def endpoint(request: Request) -> Response:
        model_id: Any = request.path_params.get("model_id")
        status, headers, body = await upstream.get("/v1/models" + (f"/{model_id}" if model_id else ""))
        if status != 200:
            if model_id:
                raise ProxyError.not_found("model_not_found", f"The model '{model_id}' does not exist.")
            raise ProxyError.upstream_failed()
        kept = client_response_headers((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
        return Response(body, headers={k.decode(): v.decode() for k, v in kept if k != b"content-type"},
                        media_type="application/json")

    return endpoint
