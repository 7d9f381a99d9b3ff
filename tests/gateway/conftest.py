"""The gateway core in a real uvicorn server (a thread, free port) in front of the real LiteLLM and the
fake provider, with a tiny test chain instead of the billing policies.

The test chain (`Probe`) records every RequestContext by request id and signals when its cleanup
ran; headers steer it: `x-test-byok: <key>` injects a member key (ctx.byok, provider "openai"),
`x-test-platform-key: <key>` injects a key without marking it BYOK, `x-test-settle: 1` pushes a
cleanup step that records when it ran and adds X-Credits-Charged, `x-test-crash: policy|cleanup`
makes the policy or its cleanup step raise.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from devstack import services
from devstack.fake_provider import CONTROLS
from proxy.app import create_app
from proxy.config.settings import Secret, Settings
from proxy.gateway.context import RequestContext

ROOT = Path(__file__).resolve().parents[2]
_ids = itertools.count(1)


def new_request_id() -> str:
    return f"core-{time.monotonic_ns()}-{next(_ids)}"


class Probe:
    """A test policy: records contexts, applies the x-test-* steering headers."""

    def __init__(self) -> None:
        self.seen: dict[str, RequestContext] = {}
        self.done: dict[str, threading.Event] = {}
        self.settled_at: dict[str, float] = {}

    async def __call__(self, ctx: RequestContext) -> None:
        self.seen[ctx.request_id] = ctx
        ctx.forward_params = CONTROLS  # what RewriteModel takes from the policy file's forward_params
        event = self.done.setdefault(ctx.request_id, threading.Event())
        ctx.cleanup.callback(event.set)
        crash = ctx.headers.get("x-test-crash")
        if crash == "policy":
            raise RuntimeError("policy bug with sk-secret-in-message")
        if crash == "cleanup":

            async def broken() -> None:
                raise RuntimeError("settlement bug")

            ctx.cleanup.push_async_callback(broken)
        byok = ctx.headers.get("x-test-byok")
        if byok:
            ctx.byok, ctx.byok_key, ctx.provider = True, Secret(byok), "openai"
        platform = ctx.headers.get("x-test-platform-key")
        if platform:
            ctx.byok_key = Secret(platform)
        if ctx.headers.get("x-test-settle"):

            async def settle() -> None:
                self.settled_at[ctx.request_id] = time.monotonic()
                ctx.response_headers["X-Credits-Charged"] = "1234"

            ctx.cleanup.push_async_callback(settle)

    def context(self, request_id: str, timeout: float = 10.0) -> RequestContext:
        """The request's context once its cleanup has run."""
        deadline = time.monotonic() + timeout
        while request_id not in self.done and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.done[request_id].wait(max(0.0, deadline - time.monotonic())), "cleanup never ran"
        return self.seen[request_id]


class ServerThread:
    """uvicorn serving an app on 127.0.0.1 in a thread; stopped by `stop()`."""

    def __init__(self, app: Any) -> None:
        self.port = services.free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, loop="uvloop", http="httptools",
                                lifespan="on", access_log=False, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"gateway-{self.port}", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def make_settings(upstream_url: str, **overrides: Any) -> Settings:
    base = Settings(
        database_url=Secret("postgresql://unused@127.0.0.1:1/unused"),
        redis_url=Secret("redis://127.0.0.1:1/0"),
        upstream_url=upstream_url,
        upstream_key=Secret(services.MASTER_KEY),
        admin_token=Secret("admin-token-for-core-tests"),
        byok_keys=(),
        litellm_config=ROOT / "litellm_config.yaml",
        policy_config=ROOT / "policy.yaml",
        max_body_bytes=1024 * 1024,
    )
    return replace(base, **overrides)


class Gateway:
    def __init__(self, server: ServerThread, probe: Probe) -> None:
        self.server = server
        self.url = server.url
        self.probe = probe

    def http(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


GatewayFactory = Callable[..., Gateway]


@pytest.fixture(scope="session")
def start_gateway() -> Iterator[GatewayFactory]:
    """Start a gateway with `make_settings(upstream_url, **overrides)`; all stopped at session end."""
    servers: list[ServerThread] = []

    def start(upstream_url: str, ready_checks: tuple[Any, ...] = (), **overrides: Any) -> Gateway:
        probe = Probe()
        app = create_app(make_settings(upstream_url, **overrides), policies=(probe,), ready_checks=ready_checks)
        server = ServerThread(app).start()
        servers.append(server)
        return Gateway(server, probe)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def gateway(start_gateway: GatewayFactory, litellm: services.Service) -> Gateway:
    """The shared gateway in front of the session's LiteLLM (body limit 1 MiB)."""
    return start_gateway(litellm.url)


class Provider:
    """The fake provider's introspection endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url

    def requests(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.url}/_requests", timeout=10).json())

    def request_tagged(self, tag: str) -> dict[str, Any]:
        found = [r for r in self.requests() if r["body"].get("fake_tag") == tag]
        assert len(found) == 1, f"provider saw {len(found)} requests tagged {tag}"
        return found[0]

    def stream(self, tag: str) -> dict[str, Any] | None:
        streams: dict[str, Any] = httpx.get(f"{self.url}/_streams", timeout=10).json()
        return streams.get(tag)


@pytest.fixture(scope="session")
def provider(fake_provider: services.Service) -> Provider:
    return Provider(fake_provider.url)


def chat(model: str = "fake-small", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi there"}], **extra}
