"""The /responses request checks and its stream tap, on the formats measured through the real LiteLLM
(tests/e2e/test_responses.py runs them end to end)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.errors import ProxyError
from proxy.gateway.body import observe_answer, parse_request
from proxy.gateway.context import RequestContext, Usage
from proxy.gateway.params import forwardable
from proxy.gateway.responses import ResponsesTap, check_responses, output_texts
from proxy.gateway.tokens import IMAGE_PART_TOKENS, MESSAGE_OVERHEAD, REPLY_PRIMING, TokenCounter
from proxy.gateway.upstream import upstream_body


def ctx(body: dict[str, Any] | None = None, stream: bool = False) -> RequestContext:
    return RequestContext(request_id="r", route="responses", headers={}, body=body or {}, stream=stream)


def refused(body: dict[str, Any]) -> ProxyError:
    with pytest.raises(ProxyError) as err:
        forwardable("responses", {"model": "m", "input": "x", **body}, frozenset())
    assert (err.value.status, err.value.code) == (400, "invalid_value")
    return err.value


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "web_search_preview"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "name": "f"}, {"type": "computer_use_preview"}]}, "tools[1].type"),
    ({"tools": [{"type": "image_generation"}]}, "tools[0].type"),
    ({"tools": "web_search"}, "tools"),
    ({"background": True}, "background"),
    ({"conversation": {"id": "conv_1"}}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"previous_response_id": 7}, "previous_response_id"),
    ({"input": 7}, "input"),
    ({"input": ["text"]}, "input[0]"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type"),
    ({"max_tokens": 5}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"service_tier": "priority"}, "service_tier"),
])
def test_what_cannot_be_bounded_or_priced_is_refused_naming_it(body: dict[str, Any], param: str) -> None:
    assert refused(body).param == param


def test_function_tools_messages_and_function_outputs_pass() -> None:
    body = {"model": "m", "instructions": "i", "max_output_tokens": 5, "background": False, "store": True,
            "tools": [{"type": "function", "name": "f", "parameters": {}}], "metadata": {"x": 1},
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "a"},
                                                   {"type": "input_image", "image_url": "data:,"}]},
                      {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                      {"type": "function_call_output", "call_id": "c", "output": "42"}]}
    kept = forwardable("responses", body, frozenset())
    assert kept == {k: v for k, v in body.items() if k != "metadata"}  # metadata: LiteLLM's own, dropped
    check_responses(kept)


def test_conversation_stays_refused_but_prompt_is_completions_own() -> None:
    assert forwardable("completions", {"model": "m", "prompt": "x"}, frozenset()) == {"model": "m", "prompt": "x"}


def test_usage_is_never_asked_for_in_a_stream() -> None:
    sent = orjson.loads(upstream_body(ctx({"model": "m", "input": "x", "stream": True}, stream=True)))
    assert sent == {"model": "m", "input": "x", "stream": True}


COMPLETED = (b'data: {"type":"response.completed","response":{"id":"resp_1","usage":{"input_tokens":3,'
             b'"output_tokens":6,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":9,"cost":7.5e-7}},'
             b'"model":"m"}\n\n')


def test_the_tap_meters_deltas_takes_usage_from_completed_and_strips_its_cost() -> None:
    c = ctx(stream=True)
    tap = ResponsesTap(c)
    created = b'data: {"type":"response.created","response":{"id":"resp_1","status":"in_progress"}}\n\n'
    delta = b'data: {"type":"response.output_text.delta","item_id":"m","delta":"Hello w1"}\n\n'
    out = tap.feed(created + delta[:20]) + tap.feed(delta[20:] + COMPLETED[:30]) + tap.feed(COMPLETED[30:])
    out += tap.feed(b"data: [DONE]\n\n") + tap.leftover()
    assert out == created + delta + (
        b'data: {"type":"response.completed","response":{"id":"resp_1","usage":{"input_tokens":3,"output_tokens":6,'
        b'"output_tokens_details":{"reasoning_tokens":2},"total_tokens":9}},"model":"m"}\n\n') + b"data: [DONE]\n\n"
    assert c.usage == Usage(3, 6)  # output_tokens includes the reasoning tokens
    assert c.response_id == "resp_1" and c.meter.chunks == 1 and tap.saw_done and tap.upstream_error is None


def test_event_lines_are_kept_and_arguments_and_reasoning_are_metered() -> None:
    c = ctx(stream=True)
    tap = ResponsesTap(c)
    args = b'event: response.function_call_arguments.delta\ndata: {"type":"response.function_call_arguments.delta",' \
           b'"delta":"{\\"a\\":1}"}\n\n'
    reasoning = b'data: {"type":"response.reasoning_text.delta","delta":"think"}\n\n'
    assert tap.feed(args + reasoning) == args + reasoning
    usage_event = b"event: response.completed\n" + COMPLETED
    assert not tap.saw_done
    assert tap.feed(usage_event).startswith(b"event: response.completed\ndata: ")
    assert c.meter.chunks == 2 and c.usage == Usage(3, 6)
    assert tap.saw_done  # a provider's own stream ends with response.completed, without LiteLLM's [DONE]


@pytest.mark.parametrize("error", [
    b'data: {"error": {"message": "litellm.APIConnectionError: secret-host", "type": "x"}}\n\n',
    b'data: {"type":"error","code":"server_error","message":"boom"}\n\n',
    b'data: {"type":"response.failed","response":{"id":"r","error":{"message":"deployment x"}}}\n\n',
])
def test_an_error_event_and_everything_after_it_is_swallowed(error: bytes) -> None:
    tap = ResponsesTap(ctx(stream=True))
    assert tap.feed(error + b"data: [DONE]\n\n") == b""
    assert tap.upstream_error is not None and not tap.saw_done


def test_a_whole_response_settles_its_usage_keeps_its_id_and_loses_its_cost() -> None:
    c = ctx()
    raw = orjson.dumps({"id": "resp_9", "object": "response", "output": [],
                        "usage": {"input_tokens": 36, "output_tokens": 87, "total_tokens": 123, "cost": None}})
    body = orjson.loads(observe_answer(c, raw))
    assert body["usage"] == {"input_tokens": 36, "output_tokens": 87, "total_tokens": 123}
    assert (c.usage, c.response_id) == (Usage(36, 87), "resp_9")


def test_a_whole_response_without_usage_is_metered_from_its_output() -> None:
    c = ctx()
    output = [{"type": "message", "content": [{"type": "output_text", "text": "one two"}]},
              {"type": "function_call", "arguments": "{}"}]
    assert output_texts(output) == ["one two", "{}"]
    observe_answer(c, orjson.dumps({"id": "resp_2", "output": output, "usage": {"input_tokens": 0,
                                                                               "output_tokens": 0}}))
    assert c.usage is None and c.meter.chunks == 2


def test_the_prompt_counts_input_in_all_its_forms_and_the_instructions() -> None:
    counter = TokenCounter(encode=lambda text: text.split())  # one token per word: exact arithmetic
    assert counter.prompt_tokens("responses", {"instructions": "a b", "input": "c d e"}) == (
        REPLY_PRIMING + MESSAGE_OVERHEAD + 3 + 2)
    items = [{"role": "user", "content": [{"type": "input_text", "text": "x y"},
                                          {"type": "input_image", "image_url": "data:,"}]},
             {"type": "function_call_output", "call_id": "c", "output": "o p q"}]
    assert counter.prompt_tokens("responses", {"input": items}) == (
        REPLY_PRIMING + (MESSAGE_OVERHEAD + 1 + 2 + IMAGE_PART_TOKENS) + (MESSAGE_OVERHEAD + 1 + 1 + 3))
    schema = {"format": {"type": "json_schema", "name": "s", "schema": {}}}
    assert counter.prompt_tokens("responses", {"input": "c", "text": schema}) > counter.prompt_tokens(
        "responses", {"input": "c"})


@pytest.mark.parametrize(("body", "code", "param"), [
    ({"model": "m"}, "missing_field", "input"),
    ({"model": "m", "input": "x", "max_output_tokens": 0}, "invalid_value", "max_output_tokens"),
    ({"model": "m", "input": "x", "max_output_tokens": "5"}, "invalid_value", "max_output_tokens"),
    ({"model": "m", "input": "x", "max_output_tokens": True}, "invalid_value", "max_output_tokens"),
    ({"model": "m", "input": "x", "max_output_tokens": 10**7 + 1}, "invalid_value", "max_output_tokens"),
])
def test_the_body_is_checked_before_anything_else(body: dict[str, Any], code: str, param: str) -> None:
    with pytest.raises(ProxyError) as err:
        parse_request(orjson.dumps(body), "responses")
    assert (err.value.status, err.value.code, err.value.param) == (400, code, param)


def test_a_chat_body_with_a_bad_max_output_tokens_is_refused_by_the_allowlist_not_a_crash() -> None:
    body, _ = parse_request(orjson.dumps({"model": "m", "messages": [{}], "max_output_tokens": "x"}),
                            "chat/completions")
    with pytest.raises(ProxyError) as err:
        forwardable("chat/completions", body, frozenset())
    assert err.value.param == "max_output_tokens"
