"""The composition root: `create_app()` builds the whole gateway; nothing happens at import.

Routes (CONTRACT.md, Client API), under `/v1` and `/api/v1/llm`: POST chat/completions,
completions, embeddings, images/generations (the billed passthrough, raw ASGI); GET models and
models/{id} (LiteLLM's list, header-filtered). `routes` given to create_app come first, so a route
there replaces a default one (e.g. per-caller /v1/models). `/healthz`, `/readyz`, `/metrics`.
Any other route or method is 404 `route_not_found`: nothing passes through unbilled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.context import Policy
from proxy.errors import ProxyError
from proxy.headers import client_response_headers
from proxy.health import Readiness, ReadyCheck, healthz, metrics_endpoint
from proxy.logs import AccessLog, configure_logging
from proxy.metrics import Metrics, configured_models
from proxy.passthrough import Passthrough
from proxy.runtime import Product
from proxy.settings import Settings
from proxy.upstream import Upstream

PREFIXES = ("/v1", "/api/v1/llm")
BILLED_ROUTES = ("chat/completions", "completions", "embeddings", "images/generations")
PolicySource = Sequence[Policy] | Callable[[State], Sequence[Policy]]
Resource = Callable[[State], AbstractAsyncContextManager[Any]]


def create_app(
    settings: Settings | None = None,
    *,
    policies: PolicySource | None = None,
    routes: Sequence[BaseRoute] = (),
    ready_checks: Sequence[ReadyCheck] = (),
    resources: Sequence[Resource] = (),
) -> Starlette:
    """The gateway app. Without `policies` it is the whole product (proxy/runtime.py: the ledger, the
    directory, the policy chain, the caller and admin routes); tests of the core pass their own chain.
    `app.state` holds settings, metrics and upstream from the start. The lifespan
    opens the upstream session, then enters each of `resources` (`(app.state) -> async context
    manager`, e.g. the asyncpg pool, Redis, the sweeper; each may put what it opens on app.state),
    then evaluates `policies`: the chain, or a factory `(app.state) -> chain`. All close in reverse."""
    settings = settings or Settings.from_env()
    product = Product(settings) if policies is None else None  # loads the policy file and model list now
    if product is not None:
        policies, resources = product.policies, (*resources, product.resource)
        ready_checks = (*ready_checks, product.postgres, product.redis)
    configure_logging(settings.log_level)
    metrics = Metrics(configured_models(settings.litellm_config))
    upstream = Upstream(settings)
    passthroughs = [Passthrough(route, upstream, settings, metrics) for route in BILLED_ROUTES]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await upstream.open()
            stack.push_async_callback(upstream.close)
            for resource in resources:
                await stack.enter_async_context(resource(app.state))
            assert policies is not None
            chain = tuple(policies if isinstance(policies, Sequence) else policies(app.state))
            for passthrough in passthroughs:
                passthrough.policies = chain
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
        Route("/readyz", Readiness(upstream, ready_checks).endpoint, methods=["GET"]),
        Route("/metrics", metrics_endpoint(metrics), methods=["GET"]),
    ]
    app = Starlette(
        routes=table,
        lifespan=lifespan,
        middleware=[Middleware(AccessLog, metrics=metrics), Middleware(_BilledFastPath, routes=fast)],
        exception_handlers={HTTPException: _route_not_found, ProxyError: _proxy_error},
    )
    app.router.redirect_slashes = False  # a trailing slash is 404, never a redirect built from the client's Host
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.upstream = upstream
    if product is not None:
        product.router = app.router
    return app


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


async def _route_not_found(_: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods alike (Starlette raises HTTPException 404/405)."""
    return await _proxy_error(_, ProxyError.route_not_found())


async def _proxy_error(_: Request, exc: Exception) -> Response:
    err = exc if isinstance(exc, ProxyError) else ProxyError.upstream_failed()
    return Response(err.to_bytes(), status_code=err.status, headers=err.headers, media_type="application/json")


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
