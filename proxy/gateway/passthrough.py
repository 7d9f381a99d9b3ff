"""The billed hot path: a plain ASGI endpoint from client request to LiteLLM and back.

Per request: build a RequestContext from the headers, then inside `async with ctx.cleanup` run the
policy chain (the body is read, bounded, and parsed once, after the policies that need only headers:
authentication comes first) and forward. Streams are relayed chunk by chunk as they
arrive (a StreamTap observes usage and text); non-stream answers are read whole, settled (the
request's cleanup is closed early) and only then sent. Every failure is a ProxyError rendered in one place; after the
first byte it becomes a final `data: {"error": ...}` event without `[DONE]`. A client that leaves
mid-stream makes us close the LiteLLM connection at once; a non-stream answer is still read (for
at most `nonstream_drain_seconds`) so its real usage is known. Cleanup runs on every path.
On SIGTERM (proxy/ops/drain.py) every request is tracked until it has settled, new ones are refused
once the grace is over, and the wait on LiteLLM is cut at the drain's deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import aiohttp
from starlette.types import Receive, Scope, Send

from proxy.config.settings import Secret, Settings
from proxy.errors import ProxyError
from proxy.gateway.attribution import attribution
from proxy.gateway.body import ClientGone, observe_answer, parse_request, read_body
from proxy.gateway.context import Policy, RequestContext
from proxy.gateway.headers import RawHeaders, bearer_token, client_response_headers, gateway_headers
from proxy.gateway.responses import ROUTE as RESPONSES
from proxy.gateway.responses import ResponsesTap
from proxy.gateway.sse import StreamTap
from proxy.gateway.upstream import Upstream, upstream_body
from proxy.gateway.upstream_errors import from_client_error, from_litellm
from proxy.gateway.watch import DisconnectWatch
from proxy.ops.drain import Drain
from proxy.ops.logs import RequestInfo, request_info
from proxy.ops.metrics import Metrics
from proxy.ops.tracing import CLIENT, Span, end, policy_span

log = logging.getLogger("creditgate.passthrough")
_STREAM_HEADERS: RawHeaders = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class Passthrough:
    """ASGI endpoint for one OpenAI route (`route` is e.g. "chat/completions")."""

    def __init__(self, route: str, upstream: Upstream, settings: Settings, metrics: Metrics,
                 policies: Sequence[Policy], drain: Drain | None = None) -> None:
        self.route = route
        self.path = "/v1/" + route
        self.upstream = upstream
        self.settings = settings
        self.metrics = metrics
        self.policies = tuple(policies)
        self.drain = drain or Drain(grace=0.0, deadline=0.0)  # one that never starts: no shutdown to follow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        info = request_info(scope)
        info.route = scope["route"].path if "route" in scope else self.path
        ctx = _context(scope, info, self.route)
        if self.drain.active:  # shutting down (proxy/ops/drain.py): served during the grace, then refused
            if self.drain.refusing:
                await self._refuse(ctx, send)
                _record(info, ctx, 0.0, time.perf_counter() - started)
                return
            ctx.response_headers["connection"] = "close"  # the client's next request reconnects elsewhere
        waited = 0.0
        settle: Span | None = None
        with self.drain.track():  # the drain waits for this request, its settlement included
            try:
                async with ctx.cleanup:
                    if await self._admit(ctx, scope, receive, send, info):
                        waited = await self._serve(ctx, receive, send)
                    settle = _settling(ctx)
            except Exception:  # noqa: BLE001 - the answer is out; a failing cleanup is logged, never a 500
                log.exception("request cleanup failed", extra={"request_id": ctx.request_id})
            end(settle, outcome=ctx.outcome)
        overhead = time.perf_counter() - started - waited
        self.metrics.timing(info.route, waited, overhead)
        _record(info, ctx, waited, overhead)

    async def _refuse(self, ctx: RequestContext, send: Send) -> None:
        """503 `shutting_down` before anything is read or held (the body is left unread; the connection closes)."""
        refusal = self.drain.refuse()
        ctx.failure = refusal.code
        self.metrics.rejected(refusal.code)
        await _send_error(send, refusal, ctx.request_id, ctx.response_headers)

    async def _admit(self, ctx: RequestContext, scope: Scope, receive: Receive, send: Send, info: RequestInfo) -> bool:
        """Run the chain; False once its refusal went out. The policies that need only the headers
        (authentication, the org, the rate limit: `reads_body = False`) run before the body is read, so
        a stranger is 401 whatever the body and is never made to wait for, or fill memory with, its
        upload; the body is read (bounded) and parsed just before the first policy that needs it."""
        trace = info.trace
        try:
            parsed = False
            for policy in self.policies:
                if not parsed and getattr(policy, "reads_body", True):
                    await self._read(ctx, scope, receive, info)
                    parsed = True
                span = trace.start(policy_span(policy))
                await policy(ctx)
                end(span)
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
        span = info.trace.start("read_body")
        raw = await read_body(scope, receive, self.settings.max_body_bytes)
        end(span, **{"http.request.body.size": len(raw)})
        ctx.body, ctx.stream = parse_request(raw, self.route)
        ctx.end_user, ctx.tags = attribution(scope["headers"], ctx.body)
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
        span = ctx.trace.start("upstream", CLIENT) if ctx.trace else None
        traceparent = ctx.trace.upstream_header(span) if ctx.trace else None
        try:
            async with watch, self.drain.cuttable():  # the drain's deadline may cut the wait on LiteLLM
                began = time.perf_counter()
                resp = await self.upstream.post(self.path, payload, traceparent=traceparent)
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
            end(span, not clean, **{"http.response.status_code": ctx.upstream_status,
                                         "creditgate.deployment": ctx.deployment_id})
            if resp is not None:
                resp.release() if clean else resp.close()

    async def _relay(self, ctx: RequestContext, resp: aiohttp.ClientResponse, send: Send,
                     watch: DisconnectWatch) -> float:
        """Relay an SSE answer chunk by chunk; returns the seconds spent waiting for chunks."""
        tap = ResponsesTap(ctx) if ctx.route == RESPONSES else StreamTap(ctx)
        head = client_response_headers(resp.raw_headers, ctx.response_headers) + _STREAM_HEADERS
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
        head = client_response_headers(resp.raw_headers, ctx.response_headers)
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
    span = _settling(ctx)
    try:
        await ctx.cleanup.aclose()
    except Exception:  # noqa: BLE001 - the answer was served; the sweeper settles a hold left behind
        log.exception("request cleanup failed", extra={"request_id": ctx.request_id})
    end(span, outcome=ctx.outcome)


def _settling(ctx: RequestContext) -> Span | None:
    """The `settle` span, once per request and only when something was held (there is something to settle)."""
    return ctx.trace.start_once("settle") if ctx.trace is not None and ctx.hold is not None else None


def _record(info: RequestInfo, ctx: RequestContext, upstream_seconds: float, gateway_seconds: float) -> None:
    """What the access line says of a finished request (its settlement included)."""
    membership, key, usage = ctx.membership, ctx.key, ctx.settlement or ctx.usage
    info.error = ctx.failure
    info.org_id = membership.org_id if membership else None
    info.user_id = membership.user_id if membership else None
    info.key_id = key.id if key else None
    info.model_served, info.deployment, info.power_level = ctx.model, ctx.deployment_id, ctx.power_level
    if ctx.body:
        info.stream = ctx.stream
    if usage is not None:
        info.prompt_tokens, info.completion_tokens = usage.prompt_tokens, usage.completion_tokens
    if ctx.hold is not None:
        charged = ctx.response_headers.get("X-Credits-Charged")
        info.held = ctx.hold.amount
        info.charged = int(charged) if charged else (0 if ctx.outcome == "voided" else None)
        info.usage_source = ctx.settlement.usage_source if ctx.settlement else None
        info.settlement = ctx.outcome
    if ctx.upstream_status is not None:
        info.upstream_seconds = upstream_seconds
    info.gateway_seconds = gateway_seconds


def _context(scope: Scope, info: RequestInfo, route: str) -> RequestContext:
    """The request's context from its headers; the body is read later (`Passthrough._read`)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    token = bearer_token(headers.get("authorization"))
    return RequestContext(
        request_id=info.request_id, route=route, headers=headers, body={},
        api_key=Secret(token) if token else None, trace=info.trace,
    )


async def _send_error(send: Send, err: ProxyError, request_id_value: str, extra: dict[str, str]) -> None:
    """The contract's error JSON with its status and headers, plus x-request-id."""
    body = err.to_bytes()
    headers = gateway_headers(request_id_value, {**extra, **err.headers})
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
