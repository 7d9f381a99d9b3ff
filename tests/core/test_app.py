"""The composition root: resources open before the chain is built and close in reverse at shutdown;
a route given to create_app replaces the default one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devstack import services
from proxy.app import create_app
from proxy.context import Policy, RequestContext
from tests.core.conftest import ServerThread, chat, make_settings


def test_resources_policy_factory_and_route_override(litellm: services.Service) -> None:
    events: list[str] = []

    def resource(name: str):  # type: ignore[no-untyped-def]
        @asynccontextmanager
        async def open_(state: State) -> AsyncIterator[None]:
            events.append(f"open {name}")
            setattr(state, name, f"{name}-handle")
            yield
            events.append(f"close {name}")

        return open_

    def chain(state: State) -> Sequence[Policy]:
        events.append(f"chain sees {state.pool} and {state.redis}")

        async def tag(ctx: RequestContext) -> None:
            ctx.response_headers["X-Chain"] = state.pool

        return (tag,)

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "only-mine"}]})

    app = create_app(make_settings(litellm.url), policies=chain, resources=(resource("pool"), resource("redis")),
                     routes=[Route("/v1/models", models, methods=["GET"])])
    server = ServerThread(app).start()
    try:
        answer = httpx.post(f"{server.url}/v1/chat/completions", json=chat(fake_chunks=1), timeout=30)
        listing = httpx.get(f"{server.url}/v1/models", timeout=30)
    finally:
        server.stop()
    assert answer.status_code == 200 and answer.headers["x-chain"] == "pool-handle"
    assert listing.json() == {"object": "list", "data": [{"id": "only-mine"}]}
    assert "x-request-id" in listing.headers
    assert events == ["open pool", "open redis", "chain sees pool-handle and redis-handle", "close redis",
                      "close pool"]
