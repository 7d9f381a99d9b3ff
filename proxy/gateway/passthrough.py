"""The billed hot path: a plain ASGI endpoint from client request to LiteLLM and back.

Per request: build a RequestContext from the headers, then inside `async with ctx.cleanup` run the
policy chain (the body is read, bounded, and parsed once, after the policies that need only headers:
authentication comes first) and forward. Streams are relayed chunk by chunk as they
arrive (a StreamTap observes usage and text); non-stream answers are read whole, settled (the
request's cleanup is closed early) and only then sent. Every failure is a ProxyError rendered in one place; after the
first byte it becomes a final `data: {"error": ...}` event without `[DONE]`. A client that leaves
mid-stream makes us close the LiteLLM connection at once; a non-stream answer is still read (for
at most `nonstream_drain_seconds`) so its real usage is known. Cleanup runs on every path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import aiohttp
from starlette.types import Receive, Scope, Send

from proxy.config.settings import Secret, Settings
from proxy.errors import ProxyError
from proxy.gateway.body import ClientGone, observe_answer, parse_request, read_body
from proxy.gateway.context import Policy, RequestContext
from proxy.gateway.headers import RawHeaders, bearer_token, client_response_headers, gateway_headers
from proxy.gateway.sse import StreamTap
from proxy.gateway.upstream import Upstream, upstream_body
from proxy.gateway.upstream_errors import from_client_error, from_litellm
from proxy.gateway.watch import DisconnectWatch
from proxy.ops.logs import RequestInfo, request_info
from proxy.ops.metrics import Metrics

log = logging.getLogger("creditgate.passthrough")
_STREAM_HEADERS: RawHeaders = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class Passthrough:
    """ASGI endpoint for one OpenAI route (`route` is e.g. "chat/completions")."""

    def __init__(self, route: str, upstream: Upstream, settings: Settings, metrics: Metrics,
                 policies: Sequence[Policy]) -> None:
        self.route = route
        self.path = "/v1/" + route
        self.upstream = upstream
        self.settings = settings
        self.metrics = metrics
        self.policies = tuple(policies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        info = request_info(scope)
        info.route = scope["route"].path if "route" in scope else self.path
        ctx = _context(scope, info, self.route)
        waited = 0.0
        try:
            async with ctx.cleanup:
                if await self._admit(ctx, scope, receive, send, info):
                    info.model, info.power_level = ctx.model or info.model, ctx.power_level
                    waited = await self._serve(ctx, receive, send)
        except Exception:  # noqa: BLE001 - the answer is out; a failing cleanup is logged, never a 500
            log.exception("request cleanup failed", extra={"request_id": ctx.request_id})
        self.metrics.timing(info.route, waited, time.perf_counter() - started - waited)

    async def _admit(self, ctx: RequestContext, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> bool:
        """Run the chain; False once its refusal went out. The policies that need only the headers
        (authentication, the org, the rate limit: `reads_body = False`) run before the body is read, so
        a stranger is 401 whatever the body and is never made to wait for, or fill memory with, its
        upload; the body is read (bounded) and parsed just before the first policy that needs it."""
        try:
            parsed = False
            for policy in self.policies:
                if not parsed and getattr(policy, "reads_body", True):
                    await self._read(ctx, scope, receive, info)
                    parsed = True
                await policy(ctx)
            if not parsed:
                await self._read(ctx, scope, receive, info)
            return True
        except ProxyError as err:
            refusal = err
        except ClientGone:
            info.status = 499  # nginx's "client closed request": nothing was sent
            ctx.failure = "client_disconnected"
            return False
        except Exception:  # noqa: BLE001 - fail closed: a broken policy refuses, it never lets through
            log.exception("policy failed", extra={"request_id": ctx.request_id})
            refusal = ProxyError.upstream_failed("The gateway could not process the request.")
        ctx.failure = ctx.failure or refusal.code
        self.metrics.rejected(refusal.code)
        await _send_error(send, refusal, ctx.request_id, ctx.response_headers)
        return False

    async def _read(self, ctx: RequestContext, scope: Scope, receive: Receive, info: RequestInfo) -> None:
        """Read (at most max_body_bytes) and parse the body into `ctx`; raises ProxyError or ClientGone."""
        raw = await read_body(scope, receive, self.settings.max_body_bytes)
        ctx.body, ctx.stream = parse_request(raw, self.route)
        ctx.client_wants_usage = ctx.stream and (ctx.body.get("stream_options") or {}).get("include_usage") is True
        info.model = str(ctx.body["model"])

    async def _serve(self, ctx: RequestContext, receive: Receive, send: Send) -> float:
        """Forward and answer; every failure is rendered here. Returns the seconds spent on LiteLLM."""
        try:
            return await self._forward(ctx, receive, send)
        except ProxyError as err:
            await self._fail(ctx, send, err)
        except Exception:  # noqa: BLE001 - rendered as 502, logged with the traceback
            log.exception("passthrough failed", extra={"request_id": ctx.request_id})
            await self._fail(ctx, send, ProxyError.upstream_failed())
        return 0.0

    async def _forward(self, ctx: RequestContext, receive: Receive, send: Send) -> float:
        """Send the request to LiteLLM and relay its answer; returns the seconds spent waiting on it."""
        payload = upstream_body(ctx)
        watch = DisconnectWatch(ctx, self.settings.nonstream_drain_seconds)
        watch.start(receive)
        resp: aiohttp.ClientResponse | None = None
        clean = False
        try:
            async with watch:
                began = time.perf_counter()
                resp = await self.upstream.post(self.path, payload)
                watch.response = resp
                ctx.upstream_status = resp.status
                ctx.deployment_id = resp.headers.get("x-litellm-model-id")
                if resp.status != 200:
                    raise from_litellm(resp.status, await resp.read(), resp.headers, ctx)
                if ctx.stream and resp.content_type == "text/event-stream":
                    waited = time.perf_counter() - began
                    waited += await self._relay(ctx, resp, send, watch)
                    clean = not watch.disconnected
                    return waited
                raw = await resp.read()
                waited = time.perf_counter() - began
            clean = True
            await self._answer(ctx, resp, raw, send, watch)
            return waited
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise from_client_error(exc) from exc
        finally:
            watch.stop()
            if resp is not None:
                resp.release() if clean else resp.close()

    async def _relay(self, ctx: RequestContext, resp: aiohttp.ClientResponse, send: Send,
                     watch: DisconnectWatch) -> float:
        """Relay an SSE answer chunk by chunk; returns the seconds spent waiting for chunks."""
        tap = StreamTap(ctx)
        head = client_response_headers(resp.raw_headers) + _STREAM_HEADERS
        await send({"type": "http.response.start", "status": 200,
                    "headers": head + gateway_headers(ctx.request_id, ctx.response_headers)})
        ctx.response_started = True
        self.metrics.active_streams.inc()
        waited = 0.0
        content = resp.content
        try:
            while True:
                t = time.perf_counter()
                try:
                    chunk = await content.readany()
                except (TimeoutError, aiohttp.ClientError):
                    if watch.disconnected:
                        return waited
                    raise
                waited += time.perf_counter() - t
                if not chunk:
                    break
                out = tap.feed(chunk)
                if out:
                    # the client may hang up as soon as it has [DONE]: from then on that is no failure
                    watch.done = tap.saw_done and tap.upstream_error is None
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            if watch.disconnected:
                return waited
            out = tap.leftover()
            if not tap.saw_done or tap.upstream_error is not None:
                raise ProxyError.upstream_failed()
            watch.done = True
            await send({"type": "http.response.body", "body": out, "more_body": False})
            return waited
        finally:
            self.metrics.active_streams.dec()

    async def _answer(self, ctx: RequestContext, resp: aiohttp.ClientResponse, raw: bytes, send: Send,
                      watch: DisconnectWatch) -> None:
        """Record usage of a whole answer, settle it, then send it (headers carry the settlement)."""
        body = observe_answer(ctx, raw)
        await _finish_early(ctx)
        head = client_response_headers(resp.raw_headers)
        head += gateway_headers(ctx.request_id, ctx.response_headers)
        head.append((b"content-length", str(len(body)).encode()))
        watch.done = True
        ctx.response_started = True
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _fail(self, ctx: RequestContext, send: Send, err: ProxyError) -> None:
        """Render a failure after the chain admitted the request (counted as an upstream error)."""
        if ctx.failure == "client_disconnected":
            return
        self.metrics.upstream_error(err.code)
        if ctx.response_started:
            ctx.failure = "upstream_failed"
            event = b"data: " + err.to_bytes() + b"\n\n"
            await send({"type": "http.response.body", "body": event, "more_body": False})
            return
        ctx.failure = err.code
        await _send_error(send, err, ctx.request_id, ctx.response_headers)


async def _finish_early(ctx: RequestContext) -> None:
    """Close the request's cleanup (settle, stop the hold's renewal, ...) before a whole answer is sent, so
    its headers carry the settlement; a failing step is logged and the answer still goes out."""
    try:
        await ctx.cleanup.aclose()
    except Exception:  # noqa: BLE001 - the answer was served; the sweeper settles a hold left behind
        log.exception("request cleanup failed", extra={"request_id": ctx.request_id})


def _context(scope: Scope, info: RequestInfo, route: str) -> RequestContext:
    """The request's context from its headers; the body is read later (`Passthrough._read`)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    token = bearer_token(headers.get("authorization"))
    return RequestContext(
        request_id=info.request_id, route=route, headers=headers, body={},
        api_key=Secret(token) if token else None,
    )


async def _send_error(send: Send, err: ProxyError, request_id_value: str, extra: dict[str, str]) -> None:
    """The contract's error JSON with its status and headers, plus x-request-id."""
    body = err.to_bytes()
    headers = gateway_headers(request_id_value, {**extra, **err.headers})
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
