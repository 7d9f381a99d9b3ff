"""Trace context: a client's traceparent is accepted only when valid (else a new trace starts), LiteLLM
receives ours with the gateway's span as parent, and with a collector configured every request exports
one trace (root, auth, reserve, upstream, settle, ...) in OTLP/HTTP JSON, in the background: a slow or
absent collector drops spans (counted), it never holds a request."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import orjson
import pytest
from aiohttp import web

from proxy.ops.tracing import (
    CLIENT,
    SERVER,
    OtlpExporter,
    Trace,
    Tracer,
    encode,
    parse_traceparent,
    policy_span,
)
from tests.e2e.conftest import make_member
from tests.ops.conftest import Product
from tests.waiting import until

TRACE, PARENT = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
VALID = f"00-{TRACE}-{PARENT}-01"


@pytest.mark.parametrize(("value", "parsed"), [
    (VALID, (TRACE, PARENT, True)),
    (f"00-{TRACE}-{PARENT}-00", (TRACE, PARENT, False)),
    (f"00-{TRACE}-{PARENT}-03", (TRACE, PARENT, True)),  # other flag bits are not ours to read
    (f"01-{TRACE}-{PARENT}-01-what-a-future-version-adds", (TRACE, PARENT, True)),
    (f"01-{TRACE}-{PARENT}-01", (TRACE, PARENT, True)),
    (f"00-{TRACE}-{PARENT}-01-extra", None),  # version 00 is exactly 55 characters
    (f"01-{TRACE}-{PARENT}-01extra", None),  # a future version's extra fields follow a "-"
    (f"ff-{TRACE}-{PARENT}-01", None),  # version ff is forbidden
    (f"00-{'0' * 32}-{PARENT}-01", None),  # all-zero trace id
    (f"00-{TRACE}-{'0' * 16}-01", None),  # all-zero parent id
    (f"00-{TRACE.upper()}-{PARENT}-01", None),  # upper-case hex is invalid
    (f"00-{TRACE[:-1]}-{PARENT}-01", None),
    (f"00-{TRACE}-{PARENT}-1", None),
    (f" {VALID}", None),
    (f"00_{TRACE}_{PARENT}_01", None),
    (f"00-{TRACE}-{PARENT[:-1]}g-01", None),
    ("", None),
    ("00-\u00e9" * 20, None),
])
def test_traceparent_is_parsed_strictly(value: str, parsed: tuple[str, str, bool] | None) -> None:
    assert parse_traceparent(value) == parsed


def test_a_valid_traceparent_continues_the_trace_and_anything_else_starts_a_new_one() -> None:
    tracer = Tracer()
    kept = tracer.begin([VALID.encode()])
    assert (kept.trace_id, kept.parent_id, kept.sampled, kept.recording) == (TRACE, PARENT, True, False)
    for headers in ([b"00-zz-bad-01"], [VALID.encode(), VALID.encode()], []):  # invalid, sent twice, absent
        fresh = tracer.begin(headers)
        assert fresh.trace_id != TRACE and len(fresh.trace_id) == 32 and fresh.parent_id is None
        assert int(fresh.trace_id, 16) != 0 and fresh.sampled


def test_the_upstream_header_names_the_gateways_span_and_keeps_the_sampling_decision() -> None:
    exporting = Trace((TRACE, PARENT, True), exporting=True)
    span = exporting.start("upstream", CLIENT)
    assert span is not None and exporting.root is not None
    assert exporting.upstream_header(span) == f"00-{TRACE}-{span.span_id}-01"
    assert (span.parent_id, exporting.root.parent_id, exporting.root.kind) == (exporting.root.span_id, PARENT, SERVER)
    unsampled = Trace((TRACE, PARENT, False), exporting=True)  # the client's decision is kept: nothing recorded
    assert unsampled.start("auth") is None and not unsampled.recording
    header = unsampled.upstream_header(None)
    assert header.startswith(f"00-{TRACE}-") and header.endswith("-00") and PARENT not in header
    assert parse_traceparent(header) is not None


def test_each_policy_has_a_span_name() -> None:
    class Authenticate:
        pass

    class PinConfig:
        pass

    assert (policy_span(Authenticate()), policy_span(PinConfig())) == ("auth", "pin_config")


def test_a_trace_records_nothing_without_an_exporter() -> None:
    trace = Tracer().begin([])
    assert (trace.root, trace.start("auth"), trace.start_once("settle"), trace.spans) == (None, None, None, [])


def test_spans_encode_as_otlp_json() -> None:
    trace = Trace((TRACE, PARENT, True), exporting=True)
    auth = trace.start("auth")
    assert auth is not None and trace.root is not None
    auth.finish(False, **{"creditgate.org_id": "org_1", "n": 3, "flag": True, "skipped": None})
    trace.root.finish(True)
    body = orjson.loads(encode([(TRACE, trace.root), (TRACE, auth)], {"attributes": []}))
    spans = body["resourceSpans"][0]["scopeSpans"][0]["spans"]
    root, child = spans
    assert (root["traceId"], root["parentSpanId"], root["kind"], root["status"]) == (TRACE, PARENT, 2, {"code": 2})
    assert (child["parentSpanId"], child["name"], child["kind"], child["status"]) == (
        trace.root.span_id, "auth", 1, {"code": 1})
    assert child["attributes"] == [{"key": "creditgate.org_id", "value": {"stringValue": "org_1"}},
                                   {"key": "n", "value": {"intValue": "3"}},
                                   {"key": "flag", "value": {"boolValue": True}}]
    assert int(child["endTimeUnixNano"]) >= int(child["startTimeUnixNano"]) > 0


class Collector:
    """A local OTLP/HTTP collector: records every /v1/traces body; `status` and `delay` make it fail or stall."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        self.delay = 0.0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def receive(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/json"
        self.bodies.append(orjson.loads(await request.read()))
        await asyncio.sleep(self.delay)
        return web.json_response({}, status=self.status)

    def spans(self) -> list[dict[str, Any]]:
        return [span for body in self.bodies for rs in body["resourceSpans"] for ss in rs["scopeSpans"]
                for span in ss["spans"]]

    async def start(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self.receive)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def finished(tracer: Tracer, n: int = 1) -> None:
    for _ in range(n):
        trace = tracer.begin([])
        trace.start("auth")
        tracer.finish(trace, "POST /v1/chat/completions", False, {"http.response.status_code": 200})


async def test_spans_go_out_in_batches_from_the_background() -> None:
    collector = await Collector().start()
    drops: list[tuple[str, int]] = []
    exporter = OtlpExporter(collector.url, on_drop=lambda reason, n: drops.append((reason, n)), interval=0.05)
    tracer = Tracer(exporter)
    await exporter.open()
    try:
        finished(tracer, 3)
        await until(lambda: len(collector.spans()) == 6, 10)
    finally:
        await exporter.close()
        await collector.stop()
    resource = collector.bodies[0]["resourceSpans"][0]["resource"]["attributes"]
    assert {"key": "service.name", "value": {"stringValue": "creditgate"}} in resource
    assert sorted(s["name"] for s in collector.spans()) == ["POST /v1/chat/completions"] * 3 + ["auth"] * 3
    assert drops == []


async def test_a_full_queue_drops_and_counts_instead_of_waiting() -> None:
    drops: list[tuple[str, int]] = []
    exporter = OtlpExporter("http://127.0.0.1:9", on_drop=lambda reason, n: drops.append((reason, n)), max_queue=5)
    tracer = Tracer(exporter)  # never opened: nothing drains the queue
    started = time.perf_counter()
    finished(tracer, 4)  # 2 spans each: 2 traces fit, the third keeps 1 of 2, the fourth none
    assert time.perf_counter() - started < 1.0
    assert drops == [("queue_full", 1), ("queue_full", 2)]


async def test_a_collector_that_fails_or_stalls_costs_spans_not_requests(caplog: pytest.LogCaptureFixture) -> None:
    collector = await Collector().start()
    collector.status = 503
    drops: list[tuple[str, int]] = []
    exporter = OtlpExporter(collector.url, on_drop=lambda reason, n: drops.append((reason, n)), interval=0.05,
                            timeout=0.3)
    tracer = Tracer(exporter)
    await exporter.open()
    try:
        with caplog.at_level(logging.INFO, logger="creditgate.tracing"):
            finished(tracer)
            await until(lambda: drops == [("export_failed", 2)], 10)
            finished(tracer)
            await until(lambda: drops == [("export_failed", 2)] * 2, 10)
            collector.status, collector.delay = 200, 1.0  # now it answers too late
            finished(tracer)
            await until(lambda: len(drops) == 3, 10)
            collector.delay = 0.0
            started = time.perf_counter()
            finished(tracer, 50)  # queued, not sent, while the request goes on
            assert time.perf_counter() - started < 0.5
            await until(lambda: len(collector.spans()) >= 100 + 6, 10)
    finally:
        await exporter.close()
        await collector.stop()
    assert drops[2] == ("export_failed", 2)
    messages = [r.getMessage() for r in caplog.records if r.name == "creditgate.tracing"]
    assert messages == ["trace export failed, spans are dropped until the collector answers: the collector "
                        "answered 503", "trace export resumed"]


# ------------------------------------------------------------------ through `creditgate serve`


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "fake-small", "messages": [{"role": "user", "content": "hello there"}], "fake_chunks": 3,
            "max_tokens": 50, **extra}


def test_a_request_is_one_trace_continuing_the_clients_and_litellm_gets_our_span(product: Product) -> None:
    member = make_member(product.gw)
    with member.http() as http:
        answer = http.post("/v1/chat/completions", json=chat(), headers={"traceparent": VALID,
                                                                         "x-request-id": "trace-ok-1"})
    assert answer.status_code == 200
    spans = {s["name"]: s for s in product.collector.trace(TRACE, 10)}
    # a span per policy of the chain (pin_config: the configuration the request runs with), the body, the hop
    assert set(spans) >= {"POST /v1/chat/completions", "auth", "org", "rate_limit", "read_body", "model", "byok",
                          "reserve", "upstream", "settle"}
    assert len(spans) == len(product.collector.trace(TRACE, 10))  # each once
    root = spans.pop("POST /v1/chat/completions")
    assert (root["parentSpanId"], root["kind"], root["status"]) == (PARENT, SERVER, {"code": 1})
    assert all(s["parentSpanId"] == root["spanId"] for s in spans.values())
    assert spans["upstream"]["kind"] == CLIENT
    attributes = {a["key"]: next(iter(a["value"].values())) for a in root["attributes"]}
    assert {k: attributes[k] for k in ("http.route", "http.response.status_code", "creditgate.model",
                                       "creditgate.org_id", "creditgate.request_id", "creditgate.stream")} == {
        "http.route": "/v1/chat/completions", "http.response.status_code": "200", "creditgate.model": "fake-small",
        "creditgate.org_id": member.org_id, "creditgate.request_id": "trace-ok-1", "creditgate.stream": False}
    assert attributes["creditgate.charged_millicredits"] == answer.headers["x-credits-charged"]
    # LiteLLM received our trace context: the client's trace id, the gateway's upstream span as parent
    sent = product.hop.headers_of("/v1/chat/completions")[-1]
    assert sent["traceparent"] == f"00-{TRACE}-{spans['upstream']['spanId']}-01"
    # spans are ordered in time: auth before reserve before upstream before settle
    starts = [int(spans[n]["startTimeUnixNano"]) for n in ("auth", "reserve", "upstream", "settle")]
    assert starts == sorted(starts)
    text = orjson.dumps(product.collector.spans).decode()
    assert member.key not in text and product.gw.env["CREDITGATE_UPSTREAM_KEY"] not in text


def test_a_stream_and_a_refusal_are_traced_too_and_a_bad_traceparent_starts_a_new_trace(product: Product) -> None:
    member = make_member(product.gw, credit=None)  # no credit: the reserve refuses
    bad = f"00-{TRACE.upper()}-{PARENT}-01"
    with member.http() as http:
        refused = http.post("/v1/chat/completions", json=chat(stream=True), headers={
            "traceparent": bad, "x-request-id": "trace-402"})
    assert refused.status_code == 402
    line = product.access("trace-402")
    assert line["trace_id"] != TRACE.lower() and len(line["trace_id"]) == 32
    spans = {s["name"]: s for s in product.collector.trace(line["trace_id"], 9)}
    assert "parentSpanId" not in spans["POST /v1/chat/completions"]  # a new trace: the root has no parent
    assert spans["reserve"]["status"] == {"code": 2} and "upstream" not in spans and "settle" not in spans
    funded = make_member(product.gw)
    unsampled = f"00-{'1' * 32}-{PARENT}-00"
    with funded.http() as http:
        streamed = http.post("/v1/chat/completions", json=chat(stream=True), headers={"traceparent": unsampled})
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
    # the client chose not to sample: nothing exported, the decision passed on to LiteLLM
    sent = product.hop.headers_of("/v1/chat/completions")[-1]["traceparent"]
    assert sent.startswith(f"00-{'1' * 32}-") and sent.endswith("-00") and PARENT not in sent
    assert product.collector.trace("1" * 32, 1, timeout=2.5) == []


def test_only_our_traceparent_crosses_to_litellm(product: Product) -> None:
    member = make_member(product.gw)
    with member.http() as http:
        answer = http.post("/v1/chat/completions", json=chat(), headers={
            "traceparent": VALID, "tracestate": "vendor=secret", "baggage": "user=alice",
            "x-request-id": "trace-allow"})
    assert answer.status_code == 200
    sent = product.hop.headers_of("/v1/chat/completions")[-1]
    assert sorted(sent) == ["accept", "accept-encoding", "authorization", "content-length", "content-type", "host",
                            "traceparent"]
    assert sent["traceparent"].startswith(f"00-{TRACE}-") and not sent["traceparent"].endswith(PARENT + "-01")
