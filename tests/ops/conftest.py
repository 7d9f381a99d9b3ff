"""The gateway core with its test chain (tests/gateway/conftest.py), for the access line and /metrics; and
the whole product (`creditgate serve`) with a local OTLP collector and a recording hop in front of LiteLLM,
for the access line of billed requests and for tracing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from devstack import services
from devstack.admin_client import AdminClient
from devstack.stack import gateway_env, migrate
from tests.e2e.conftest import Gateway
from tests.gateway.conftest import gateway, provider, start_gateway  # noqa: F401 - fixtures used here too


class ThreadServer:
    """An aiohttp app on a free loopback port, served by its own event loop in a thread (the gateway under
    test is a subprocess that may call it while the test itself blocks)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = services.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: web.AppRunner | None = None

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self._runner = web.AppRunner(self.app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self.loop.run_until_complete(start())
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> ThreadServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def cleanup() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Collector:
    """Receives OTLP/HTTP JSON at /v1/traces and keeps every span."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self.receive)
        return app

    async def receive(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        with self.lock:
            self.spans += [s for rs in body["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
        return web.json_response({})

    def trace(self, trace_id: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The spans of one trace, once `count` of them arrived (the exporter sends every second)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [s for s in self.spans if s["traceId"] == trace_id]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


class RecordingHop:
    """Between the gateway and LiteLLM: forwards every request as it is and records the headers it got."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        return app

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if self.session is None:
            self.session = aiohttp.ClientSession(auto_decompress=False)
        self.seen.append((request.path, {k.lower(): v for k, v in request.headers.items()}))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self.session.request(request.method, self.target + request.path_qs, headers=headers,
                                        data=await request.read()) as answer:
            body = await answer.read()
            kept = {k: v for k, v in answer.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
            return web.Response(status=answer.status, body=body, headers=kept)

    def headers_of(self, path: str) -> list[dict[str, str]]:
        """The headers of every request the gateway sent to `path`, in order."""
        return [headers for seen, headers in self.seen if seen == path]


@dataclass
class Product:
    gw: Gateway
    collector: Collector
    hop: RecordingHop

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in Path(self.gw.svc.log).read_text(errors="replace").splitlines():
            if line.startswith("{"):
                lines.append(orjson.loads(line))
        return lines

    def access(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The one access line of `request_id` (it is written when the request is finished)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.log_lines()
                     if line.get("logger") == "creditgate.access" and line.get("request_id") == request_id]
            if found or time.monotonic() > deadline:
                assert len(found) == 1, found
                return found[0]
            time.sleep(0.05)


@pytest.fixture(scope="session")
def product(pg: services.Service, redis_server: services.Service, litellm: services.Service,
            fake_provider: services.Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Product]:
    """`creditgate serve` exporting traces to a local collector, its LiteLLM behind a recording hop."""
    collector, hop = Collector(), RecordingHop(litellm.url)
    collector_server, hop_server = ThreadServer(collector.app()).start(), ThreadServer(hop.app()).start()
    config = services.render_litellm_config(fake_provider.url, tmp_path_factory.mktemp("ops") / "litellm_config.yaml")
    database_url = services.create_database(pg.url, "ops_product")
    migrate(database_url)
    env = gateway_env(database_url, redis_server.url, hop_server.url, litellm_config=config,
                      extra={"CREDITGATE_OTLP_ENDPOINT": collector_server.url})
    svc = services.start_gateway(env)
    gw = Gateway(svc, env, AdminClient(svc.url, env["CREDITGATE_ADMIN_TOKEN"]))
    yield Product(gw, collector, hop)
    gw.admin.close()
    svc.stop()
    if hop.session is not None:
        asyncio.run_coroutine_threadsafe(hop.session.close(), hop_server.loop).result(10)
    hop_server.stop()
    collector_server.stop()
