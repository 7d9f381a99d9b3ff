"""The servers `bench.gateway` measures, each run as its own process:

- `python -m bench.gateway_servers bare --port N --upstream URL`: a bare raw-ASGI + aiohttp
  passthrough (the floor any Python proxy on this stack can reach; perf-ceiling.md stack c2).
- `python -m bench.gateway_servers gateway --port N --upstream URL [--chain module:factory]`:
  creditgate's `create_app` with dummy database/Redis settings and the given policy chain
  (`factory(app_state) -> Sequence[Policy]`; none = the empty chain); or `--app module:factory`,
  `factory(upstream_url) -> ASGI app`, for a fully wired gateway (pool, Redis, the real chain).
Both run uvicorn with uvloop + httptools and no access log, like `creditgate serve`.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
from starlette.types import Receive, Scope, Send

from devstack import services
from devstack.fake_provider import CONTROLS

ROOT = Path(__file__).resolve().parent.parent
_FORWARDED = (b"content-type", b"authorization", b"accept")


class BarePassthrough:
    """Reads the body, POSTs it upstream, relays SSE chunk by chunk or a whole JSON answer."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                                                 auto_decompress=False, trust_env=False)
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            await self.session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in _FORWARDED}
        assert self.session is not None
        async with self.session.post(self.upstream + scope["path"], data=body, headers=headers) as resp:
            kind = resp.headers.get("content-type", "application/json").encode()
            if kind.startswith(b"text/event-stream"):
                await send({"type": "http.response.start", "status": resp.status, "headers": [(b"content-type", kind)]})
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            data = await resp.read()
            await send({"type": "http.response.start", "status": resp.status,
                        "headers": [(b"content-type", kind), (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})


def _load(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def gateway_app(upstream: str, chain: str | None, log_level: str) -> Any:
    from proxy.app import create_app
    from proxy.config.settings import Secret, Settings

    settings = Settings(
        database_url=Secret("postgresql://bench@127.0.0.1:1/bench"), redis_url=Secret("redis://127.0.0.1:1/0"),
        upstream_url=upstream, upstream_key=Secret(services.MASTER_KEY), admin_token=Secret("bench-admin-token-xx"),
        byok_keys=(), litellm_config=ROOT / "litellm_config.yaml", policy_config=ROOT / "policy.yaml",
        log_level=log_level,
    )
    # the core alone: one policy that forwards the fake provider's controls as the shipped policy file's
    # forward_params does (RewriteModel's job in the product). Without `policies` create_app builds the whole
    # product (PostgreSQL, Redis)
    return create_app(settings, policies=_load(chain) if chain else (_forward_fake_controls,))


async def _forward_fake_controls(ctx: Any) -> None:
    ctx.forward_params = CONTROLS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("bare", "gateway"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--chain")
    parser.add_argument("--app")
    parser.add_argument("--log-level", default="INFO", help="INFO writes creditgate's access line per request")
    args = parser.parse_args()
    if args.kind == "bare":
        app = BarePassthrough(args.upstream)
    elif args.app:
        app = _load(args.app)(args.upstream)
    else:
        app = gateway_app(args.upstream, args.chain, args.log_level)
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", access_log=False,
                log_level="warning", lifespan="on", server_header=False)


if __name__ == "__main__":
    main()
