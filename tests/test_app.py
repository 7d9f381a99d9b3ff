"""The composition root: parts open in order before serving and close in reverse at shutdown, a part that
fails to open closes those opened before it; a route given to create_app replaces the default one."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devstack import services
from proxy.app import Step, create_app
from proxy.gateway.context import RequestContext
from tests.gateway.conftest import ServerThread, chat, make_settings


def step(events: list[str], name: str, *, fail: bool = False) -> Step:
    async def open_() -> None:
        events.append(f"open {name}")
        if fail:
            raise RuntimeError(f"{name} cannot open")

    async def close() -> None:
        events.append(f"close {name}")

    return Step(open_, close)


def test_parts_open_in_order_close_in_reverse_and_a_route_replaces_the_default(litellm: services.Service) -> None:
    events: list[str] = []

    async def tag(ctx: RequestContext) -> None:
        ctx.response_headers["X-Chain"] = "tagged"

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "only-mine"}]})

    app = create_app(make_settings(litellm.url), policies=(tag,), parts=(step(events, "pool"), step(events, "redis")),
                     routes=[Route("/v1/models", models, methods=["GET"])])
    server = ServerThread(app).start()
    try:
        answer = httpx.post(f"{server.url}/v1/chat/completions", json=chat(fake_chunks=1), timeout=30)
        listing = httpx.get(f"{server.url}/v1/models", timeout=30)
    finally:
        server.stop()
    assert answer.status_code == 200 and answer.headers["x-chain"] == "tagged"
    assert listing.json() == {"object": "list", "data": [{"id": "only-mine"}]}
    assert "x-request-id" in listing.headers
    assert events == ["open pool", "open redis", "close redis", "close pool"]


def test_a_part_that_fails_to_open_closes_what_opened_before_it(litellm: services.Service) -> None:
    """open_runtime used to leak the pool and the key-cache task when the token counter failed to warm."""
    events: list[str] = []
    app = create_app(make_settings(litellm.url), policies=(),
                     parts=(step(events, "pool"), step(events, "keys"), step(events, "warm", fail=True),
                            step(events, "never")))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(RuntimeError, match="warm cannot open"):
        asyncio.run(start())
    assert events == ["open pool", "open keys", "open warm", "close keys", "close pool"]
