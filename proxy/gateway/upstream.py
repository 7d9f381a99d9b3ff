"""The hop to LiteLLM: one shared aiohttp session, the body LiteLLM receives, and error mapping.

aiohttp, not httpx: shared/research/perf-ceiling.md measured httpx 0.28 at ~1,800 µs CPU per
request against 91 µs for bare ASGI + aiohttp, and httpx collapsing to 83 of ~635 rps under 64
slow streams (encode/httpx#3215). The session never decompresses (`auto_decompress=False`) and asks
for identity encoding, so bytes pass through untouched; it ignores proxy variables (`trust_env`).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from proxy.config.settings import Settings
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext
from proxy.gateway.headers import upstream_request_headers
from proxy.gateway.params import OPENAI_PARAMS, STREAM_OPTIONS, silently_dropped
from proxy.gateway.upstream_errors import from_client_error


def upstream_body(ctx: RequestContext) -> bytes:
    """The JSON LiteLLM receives, built from the allowlist (proxy/gateway/params.py): the route's OpenAI
    parameters and the model's `forward_params` (RewriteModel already refused anything else; this is
    the last gate, so a chain without it still forwards nothing else), with the chain's model, the
    member's own key at the top level (litellm.md §3) and, for streams, include_usage forced on."""
    allowed = OPENAI_PARAMS[ctx.route]
    extra = ctx.forward_params
    body: dict[str, Any] = {
        k: v for k, v in ctx.body.items() if (k in allowed or k in extra) and not silently_dropped(k)
    }
    if ctx.model:
        body["model"] = ctx.model
    if ctx.byok_key is not None:
        body["api_key"] = ctx.byok_key.reveal()
    if ctx.stream and ctx.route != "responses":  # /responses always reports usage in response.completed
        options = body.get("stream_options")
        kept = {k: v for k, v in options.items() if k in STREAM_OPTIONS} if isinstance(options, dict) else {}
        body["stream_options"] = {**kept, "include_usage": True}
    return orjson.dumps(body)


class NotOpen(aiohttp.ClientConnectionError):
    """The session is not open (before the lifespan or after it): a failed hop, the contract's 502, never
    a 500."""


class Upstream:
    """LiteLLM over one keep-alive aiohttp session, opened and closed by the app's lifespan."""

    def __init__(self, settings: Settings) -> None:
        self.base_url = settings.upstream_url.rstrip("/")
        self._headers = {**upstream_request_headers(settings.upstream_key.reveal()), "Accept-Encoding": "identity"}
        # sock_read bounds the wait for each read (headers, then every chunk), not a stream's length
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.upstream_connect_timeout_seconds,
            sock_connect=settings.upstream_connect_timeout_seconds,
            sock_read=settings.upstream_timeout_seconds,
        )
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        # LiteLLM's uvicorn drops idle connections after 5 s (timeout_keep_alive): retire ours first, so
        # a POST never goes out on a connection the server is closing (POSTs are not retried).
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=False, trust_env=False,
            skip_auto_headers=("User-Agent",), raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise NotOpen("the upstream session is not open (the app's lifespan opens it)")
        return self._session

    async def post(self, path: str, payload: bytes, *, traceparent: str | None = None) -> aiohttp.ClientResponse:
        """POST `payload` to LiteLLM; the caller owns the response (release or close it). `traceparent` is
        the one header a request adds to the allowlisted ones: our own W3C trace context, built by
        proxy/ops/tracing.py from ids it validated or made, never the client's text.
        Raises ProxyError (upstream_unreachable / upstream_timeout / upstream_failed)."""
        headers = {**self._headers, "traceparent": traceparent} if traceparent else self._headers
        try:
            return await self.session.post(self.base_url + path, data=payload, headers=headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise from_client_error(exc) from exc

    async def get(self, path: str, timeout: float | None = None,
                  method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        """GET (or DELETE) a small LiteLLM resource whole: (status, headers, body). Raises ProxyError."""
        limit = aiohttp.ClientTimeout(total=timeout) if timeout else None
        try:
            async with self.session.request(method, self.base_url + path, headers=self._headers,
                                            timeout=limit) as resp:
                return resp.status, dict(resp.headers), await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise from_client_error(exc) from exc

    async def litellm(self) -> None:
        """The readiness check of LiteLLM: `/health/liveliness`, never `/health` (which calls every provider)."""
        status, _, _ = await self.get("/health/liveliness", timeout=2.0)
        if status != 200:
            raise ProxyError.upstream_failed()
