"""The SSE tap on LiteLLM-shaped streams (litellm-captures/04): event splitting across arbitrary
chunk boundaries, the usage chunk's rules, metering, and LiteLLM's own error event."""

from __future__ import annotations

import orjson
import pytest

from proxy.gateway.context import RequestContext, Usage
from proxy.gateway.sse import StreamTap, split_events


def event(obj: dict[str, object]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "fake-small"}
CONTENT = [event({**BASE, "choices": [{"index": 0, "delta": {"content": t}}]}) for t in ("Hello", " w1", " w2")]
FINISH = event({**BASE, "choices": [{"finish_reason": "stop", "index": 0, "delta": {}}]})
USAGE = event({**BASE, "choices": [{"index": 0, "delta": {}}],
               "usage": {"completion_tokens": 3, "prompt_tokens": 11, "total_tokens": 14, "cost": 4.5e-7,
                         "completion_tokens_details": {"reasoning_tokens": 0}}})
DONE = b"data: [DONE]\n\n"
STREAM = b"".join(CONTENT) + FINISH + USAGE + DONE
SPEC_USAGE = event({**BASE, "choices": [], "usage": {"completion_tokens": 3, "prompt_tokens": 11, "total_tokens": 14,
                                                     "completion_tokens_details": {"reasoning_tokens": 0}}})


def ctx(wants_usage: bool) -> RequestContext:
    return RequestContext(request_id="r", route="chat/completions", headers={}, body={}, stream=True,
                          client_wants_usage=wants_usage)


def run(stream: bytes, size: int, wants_usage: bool) -> tuple[bytes, RequestContext, StreamTap]:
    c = ctx(wants_usage)
    tap = StreamTap(c)
    out = b"".join(tap.feed(stream[i : i + size]) for i in range(0, len(stream), size)) + tap.leftover()
    return out, c, tap


@pytest.mark.parametrize("size", [1, 7, 64, 333, 100_000])
def test_usage_chunk_dropped_unless_asked(size: int) -> None:
    out, c, tap = run(STREAM, size, wants_usage=False)
    assert out == b"".join(CONTENT) + FINISH + DONE
    assert c.usage == Usage(11, 3) and tap.saw_done and c.meter.chunks == 3


@pytest.mark.parametrize("size", [1, 50, 100_000])
def test_usage_chunk_rewritten_to_spec_when_asked(size: int) -> None:
    out, c, _ = run(STREAM, size, wants_usage=True)
    assert out == b"".join(CONTENT) + FINISH + SPEC_USAGE + DONE
    assert c.usage == Usage(11, 3)


def test_usage_on_a_content_chunk_keeps_the_content() -> None:
    mixed = event({**BASE, "choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 2, "completion_tokens": 1, "cost": 1.0}})
    out, c, _ = run(mixed + DONE, 10, wants_usage=False)
    assert out == event({**BASE, "choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}]}) + DONE
    assert c.usage == Usage(2, 1) and c.meter.chunks == 1


def test_litellm_error_event_is_swallowed_and_no_done() -> None:
    error = b'data: {"error": {"message": "litellm.APIConnectionError: x", "type": null, "code": "500"}}\n\n'
    out, c, tap = run(CONTENT[0] + error, 5, wants_usage=False)
    assert out == CONTENT[0]
    assert tap.upstream_error == {"message": "litellm.APIConnectionError: x", "type": None, "code": "500"}
    assert not tap.saw_done and c.usage is None


def test_crlf_and_meter_of_tool_calls_and_completions() -> None:
    call = {"function": {"arguments": '{"a": 1}'}}
    tool = event({**BASE, "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    text = event({"object": "text_completion", "choices": [{"index": 0, "text": "abcd"}]})
    out, c, _ = run((tool + text + DONE).replace(b"\n", b"\r\n"), 3, wants_usage=False)
    assert out == tool + text + DONE
    assert c.meter.chunks == 2 and c.meter.tokens() == 3  # 12 characters / 4


def test_meter_reads_escaped_and_multi_choice_content() -> None:
    quoted = event({**BASE, "choices": [{"index": 0, "delta": {"content": 'say "hi" é\n'}}]})
    choices = [{"index": 0, "delta": {"content": "ab"}}, {"index": 1, "delta": {"content": "cd"}}]
    two = event({**BASE, "choices": choices})
    plain = event({**BASE, "choices": [{"index": 0, "delta": {"content": "plain"}}]})
    c = ctx(wants_usage=False)
    tap = StreamTap(c)
    assert tap.feed(quoted + two + plain) == quoted + two + plain
    assert c.meter.chunks == 3
    assert c.meter._pending == ['say "hi" é\n', "abcd", "plain"]


def test_split_events_keeps_an_incomplete_event_for_the_next_chunk_and_reads_crlf() -> None:
    events, complete, rest = split_events(b"data: 1\r\n\r\ndata: 2", b"\r\n\r\ndata: 3")
    assert (events, complete, rest) == ([b"data: 1", b"data: 2"], b"data: 1\n\ndata: 2\n\n", b"data: 3")
    assert split_events(rest, b"\n") == ([], b"", b"data: 3\n")
    assert split_events(b"data: 3\n", b"\n")[0] == [b"data: 3"]
