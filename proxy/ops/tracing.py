"""W3C trace context in, one trace per request out: the `traceparent` LiteLLM receives and, when
CREDITGATE_OTLP_ENDPOINT is set, the request's spans exported over OTLP/HTTP JSON.

A client's `traceparent` is accepted only when it is exactly what the W3C Trace Context spec allows
(lower-case hex, version 00 exactly 55 characters, no all-zero ids, never version ff); anything else,
or the header sent twice, is ignored and a new trace starts. The request's spans are a root span
(`POST /v1/chat/completions`, kind server) with children for each policy of the chain (`auth`, `org`,
`rate_limit`, `model`, `byok`, `reserve`), `read_body`, `upstream` (kind client: from the request to
LiteLLM until its last byte) and `settle`. LiteLLM receives `traceparent: 00-<trace id>-<upstream span
id>-<flags>`, built by us; no other client header ever becomes an upstream header.

Sampling follows the parent (OpenTelemetry's default): a client that sent the sampled flag off gets no
exported spans; a trace the gateway starts is sampled. Export never touches a request: finished spans
go into a bounded queue (a full queue drops them, counted), a background task posts them in batches to
`{endpoint}/v1/traces` every second, and a slow or absent collector costs dropped spans
(`creditgate_trace_spans_dropped_total{reason}`), never a request's time. Attributes carry the route,
statuses, models, the org id and money amounts: never a key, a body or a header.

Written here rather than with opentelemetry-sdk: about 200 lines for exactly this, no dependency, and
a cost per request measured by `bench/tracing.py` (README, Numbers).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

import aiohttp
import orjson

from proxy.tasks import wait_event

log = logging.getLogger("creditgate.tracing")

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
INTERNAL, SERVER, CLIENT = 1, 2, 3  # OTLP span kinds
POLICY_SPANS = {"Authenticate": "auth", "ResolveOrg": "org", "RateLimit": "rate_limit", "RewriteModel": "model",
                "InjectProviderKey": "byok", "ReserveCredits": "reserve"}
Attribute = str | int | bool | None


def policy_span(policy: object) -> str:
    """The span name of a policy of the chain: POLICY_SPANS, else its class name in snake case."""
    name = type(policy).__name__
    return POLICY_SPANS.get(name) or re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def parse_traceparent(value: str) -> tuple[str, str, bool] | None:
    """(trace id, parent span id, sampled) of a valid W3C `traceparent`, else None. A future version's
    header is read as its first four fields when what follows is a `-` (the spec's forward rule)."""
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    version, trace_id, parent_id, flags = m.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    if len(value) != 55 and (version == "00" or value[55] != "-"):
        return None
    return trace_id, parent_id, bool(int(flags, 16) & 1)


def _trace_id() -> str:
    return f"{random.getrandbits(128) or 1:032x}"


def _span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"


class Span:
    __slots__ = ("attributes", "end", "error", "kind", "name", "parent_id", "span_id", "start")

    def __init__(self, name: str, parent_id: str | None, kind: int = INTERNAL) -> None:
        self.name = name
        self.span_id = _span_id()
        self.parent_id = parent_id
        self.kind = kind
        self.start = time.time_ns()
        self.end = 0
        self.error = False
        self.attributes: dict[str, Attribute] | None = None  # most spans carry none: no dict for them

    def finish(self, error: bool = False, /, **attributes: Attribute) -> None:
        if not self.end:
            self.end = time.time_ns()
        self.error = self.error or error
        if attributes:
            self.attributes = {**self.attributes, **attributes} if self.attributes else attributes


class Trace:
    """One request's trace. `recording` (an exporter is set and the trace is sampled): spans are kept;
    otherwise `start` returns None and costs nothing, and only ids are made for the upstream header."""

    __slots__ = ("parent_id", "recording", "root", "sampled", "spans", "trace_id")

    def __init__(self, traceparent: tuple[str, str, bool] | None, exporting: bool) -> None:
        if traceparent is None:
            self.trace_id, self.parent_id, self.sampled = _trace_id(), None, True
        else:
            self.trace_id, self.parent_id, self.sampled = traceparent
        self.recording = exporting and self.sampled
        self.spans: list[Span] = []
        self.root: Span | None = Span("request", self.parent_id, SERVER) if self.recording else None

    def start(self, name: str, kind: int = INTERNAL) -> Span | None:
        """A child of the root span, or None when not recording."""
        if self.root is None:
            return None
        span = Span(name, self.root.span_id, kind)
        self.spans.append(span)
        return span

    def start_once(self, name: str) -> Span | None:
        """`start(name)` unless a span of that name was started already (the settlement may run early)."""
        if self.root is None or any(s.name == name for s in self.spans):
            return None
        return self.start(name)

    def upstream_header(self, span: Span | None) -> str:
        """The `traceparent` LiteLLM receives: our span (the upstream span when recording) as its parent."""
        return f"00-{self.trace_id}-{span.span_id if span is not None else _span_id()}-{'01' if self.sampled else '00'}"


def end(span: Span | None, error: bool = False, /, **attributes: Attribute) -> None:
    """Finish a span that may be None (not recording)."""
    if span is not None:
        span.finish(error, **attributes)


class Tracer:
    """Makes each request's Trace; hands recorded ones to the exporter (None: nothing is exported)."""

    def __init__(self, exporter: OtlpExporter | None = None) -> None:
        self.exporter = exporter

    def begin(self, traceparent: list[bytes]) -> Trace:
        """A new Trace from the request's `traceparent` header values (one valid value continues it)."""
        parent = parse_traceparent(traceparent[0].decode("latin-1")) if len(traceparent) == 1 else None
        return Trace(parent, self.exporter is not None)

    def finish(self, trace: Trace, name: str, error: bool, attributes: Mapping[str, Attribute]) -> None:
        """End the root span (named `name`, e.g. "POST /v1/chat/completions") and export the trace."""
        if trace.root is None or self.exporter is None:
            return
        trace.root.name = name
        trace.root.finish(error, **attributes)
        for span in trace.spans:  # a span an exception left open ended with the request, in error
            if not span.end:
                span.finish(True)
        self.exporter.submit(trace)


DropHook = Callable[[str, int], None]


class OtlpExporter:
    """Spans to `{endpoint}/v1/traces` (OTLP/HTTP, JSON encoding) in batches, from a background task.
    `on_drop(reason, spans)` counts what is lost: "queue_full" (more than `max_queue` spans waiting) or
    "export_failed" (the collector refused, failed or did not answer within `timeout`)."""

    def __init__(self, endpoint: str, *, on_drop: DropHook | None = None, max_queue: int = 4096,
                 max_batch: int = 512, interval: float = 1.0, timeout: float = 5.0) -> None:
        self.url = endpoint.rstrip("/") + "/v1/traces"
        self._on_drop = on_drop or (lambda reason, n: None)
        self._max_queue, self._max_batch, self._interval = max_queue, max_batch, interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._queue: deque[tuple[str, Span]] = deque()
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._closing = False
        self._resource = _resource()

    def submit(self, trace: Trace) -> None:
        """Queue a finished trace's spans (the root first); never waits, never raises."""
        spans = [trace.root, *trace.spans] if trace.root is not None else trace.spans
        room = self._max_queue - len(self._queue)
        if room < len(spans):
            self._on_drop("queue_full", len(spans) - max(room, 0))
            spans = spans[:max(room, 0)]
        self._queue.extend((trace.trace_id, s) for s in spans)
        if len(self._queue) >= self._max_batch:
            self._wake.set()

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=False)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="creditgate-otlp")

    async def close(self) -> None:
        """Send what is queued, for at most the export timeout, then stop (what is left is dropped, counted)."""
        task, self._task = self._task, None
        if task is not None:
            self._closing = True
            self._wake.set()
            done, _ = await asyncio.wait({task}, timeout=self._timeout.total)
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._queue:
            self._on_drop("export_failed", len(self._queue))
            self._queue.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        """Wake every `interval`, or at once when a batch is full or the exporter closes; send everything queued.
        (`wait_event`, never `wait_for`: see proxy/tasks.py.)"""
        while True:
            await wait_event(self._wake, self._interval)
            self._wake.clear()
            while self._queue:
                await self._export_batch()
            if self._closing:
                return

    async def _export_batch(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
        assert self._session is not None
        try:
            async with self._session.post(self.url, data=encode(batch, self._resource),
                                          headers={"content-type": "application/json"}) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
                problem = f"the collector answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok, problem = False, type(exc).__name__
        if not ok:
            self._on_drop("export_failed", len(batch))
        if ok == self._failing:  # log each change of state once, not every batch
            self._failing = not ok
            if ok:
                log.info("trace export resumed")
            else:
                log.warning("trace export failed, spans are dropped until the collector answers: %s", problem)


def _resource() -> dict[str, Any]:
    try:
        version = metadata.version("creditgate")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"attributes": _attributes({"service.name": "creditgate", "service.version": version})}


def _attributes(values: Mapping[str, Attribute]) -> list[dict[str, Any]]:
    """OTLP's key-value list (the resource's); spans' are encoded by `_span_attributes`."""
    return orjson.loads("[" + _span_attributes(values) + "]")  # type: ignore[no-any-return]


def _json(text: str) -> str:
    return orjson.dumps(text).decode()


def _span_attributes(values: Mapping[str, Attribute]) -> str:
    """The JSON of OTLP attributes, written directly: building dicts for orjson cost more than the rest of
    the span (bench/tracing.py)."""
    out = []
    for key, value in values.items():
        if value is None:
            continue
        if value is True or value is False:
            out.append(f'{{"key":{_json(key)},"value":{{"boolValue":{"true" if value else "false"}}}}}')
        elif isinstance(value, int):
            out.append(f'{{"key":{_json(key)},"value":{{"intValue":"{value}"}}}}')
        else:
            out.append(f'{{"key":{_json(key)},"value":{{"stringValue":{_json(value)}}}}}')
    return ",".join(out)


def encode(batch: list[tuple[str, Span]], resource: dict[str, Any]) -> bytes:
    """An ExportTraceServiceRequest in OTLP's JSON encoding (ids as hex, 64-bit integers as strings). Ids,
    kinds and times are ours (hex and digits); names and attribute values are escaped by orjson."""
    spans = []
    for trace_id, s in batch:
        parent = f'"parentSpanId":"{s.parent_id}",' if s.parent_id else ""
        attributes = f',"attributes":[{_span_attributes(s.attributes)}]' if s.attributes else ""
        spans.append(
            f'{{"traceId":"{trace_id}","spanId":"{s.span_id}",{parent}"name":{_json(s.name)},"kind":{s.kind},'
            f'"startTimeUnixNano":"{s.start}","endTimeUnixNano":"{s.end or s.start}"{attributes},'
            f'"status":{{"code":{2 if s.error else 1}}}}}')
    scope = f'{{"scope":{{"name":"creditgate"}},"spans":[{",".join(spans)}]}}'
    return f'{{"resourceSpans":[{{"resource":{orjson.dumps(resource).decode()},"scopeSpans":[{scope}]}}]}}'.encode()
