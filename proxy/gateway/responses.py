"""The Responses API (`POST /v1/responses`): what a request may carry, and a tap on its event stream.

LiteLLM 1.106.2 serves `/v1/responses` natively for providers that speak it and, for chat-only ones,
through its bridge to chat completions (litellm/responses/main.py `_bridges_to_chat_completions`). Either
way the answer is the Responses format, measured through the real LiteLLM (tests/e2e/test_responses.py):

- non-stream: one `response` object whose `usage` is `{input_tokens, output_tokens, total_tokens,
  output_tokens_details: {reasoning_tokens}, cost}` (`cost` is LiteLLM's: removed);
- stream: `response.created`, `response.in_progress`, `response.output_item.added`, ...,
  `response.output_text.delta` (the text, in `delta`), ..., `response.completed` whose `response.usage`
  is the usage (with LiteLLM's `cost`: removed), then `data: [DONE]`. Usage always comes in
  `response.completed`: `stream_options.include_usage` is never injected for this route.

`output_tokens` already includes the reasoning tokens (OpenAI's usage object: `output_tokens_details`
breaks it down), so the charge is `input_tokens` at the input price plus `output_tokens` at the output
price. A stream cut short is metered from its delta events, like chat.

What cannot be bounded before it is sent is refused (400 `invalid_value` naming the field): built-in tools
(web search, file search, code interpreter, computer use, image generation, MCP, ...: billed per call or
by rules the catalogue does not price), `background: true` (answered later, not metered by this stream),
input items that point at stored content (`item_reference`) and content parts the catalogue cannot price
(files, audio).
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.errors import ProxyError
from proxy.gateway.context import OutputMeter, RequestContext
from proxy.gateway.sse import split_events, strip_cost, usage_from

ROUTE = "responses"
TOOL_TYPES = frozenset({"function"})
# input items whose size is in the request itself (others name stored or server-side content)
ITEM_TYPES = frozenset({"message", "function_call", "function_call_output", "reasoning"})
CONTENT_PARTS = frozenset({"input_text", "input_image", "output_text", "refusal", "text"})
UNPRICED_PARTS = frozenset({"input_file", "input_audio", "file", "audio"})
# stream events whose `delta` is model output (text, function arguments, reasoning)
_DELTAS = (b"response.output_text.delta", b"response.function_call_arguments.delta",
           b"response.reasoning_text.delta", b"response.reasoning_summary_text.delta",
           b"response.refusal.delta")
_FINAL = frozenset({"response.completed", "response.incomplete"})
_DONE = b"data: [DONE]"


def check_responses(body: dict[str, Any]) -> None:
    """400 `invalid_value` (naming the field) for what the gateway cannot bound or price on /responses."""
    if body.get("background") not in (None, False):
        raise ProxyError.invalid_value("background", "'background' responses are not supported here: a "
                                       "background response cannot be metered by its stream.")
    previous = body.get("previous_response_id")
    if previous is not None and (not isinstance(previous, str) or not 0 < len(previous) <= 1024):
        raise ProxyError.invalid_value("previous_response_id", "'previous_response_id' must be a response id.")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise ProxyError.invalid_value("tools", "'tools' must be a list.")
        for index, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind not in TOOL_TYPES:
                raise ProxyError.invalid_value(
                    f"tools[{index}].type", f"Tools of type {str(kind)[:32]!r} are not priced on this gateway; "
                    "only function tools are supported.")
    items = body.get("input")
    if isinstance(items, str):
        return
    if not isinstance(items, list):
        raise ProxyError.invalid_value("input", "'input' must be a string or a list of input items.")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ProxyError.invalid_value(f"input[{i}]", "Input items must be objects.")
        kind = item.get("type", "message")
        if kind not in ITEM_TYPES:
            raise ProxyError.invalid_value(f"input[{i}].type",
                                           f"Input items of type {str(kind)[:32]!r} are not supported here.")
        content = item.get("content")
        for j, part in enumerate(content if isinstance(content, list) else ()):
            part_kind = part.get("type") if isinstance(part, dict) else None
            if part_kind not in CONTENT_PARTS:
                why = "are not priced on this gateway" if part_kind in UNPRICED_PARTS else "are not supported"
                raise ProxyError.invalid_value(f"input[{i}].content[{j}].type",
                                               f"Content parts of type {str(part_kind)[:32]!r} {why}.")


def observe_response(ctx: RequestContext, answer: dict[str, Any]) -> None:
    """A whole (non-stream) response: remember its id; when it carries no usage, meter its output text."""
    rid = answer.get("id")
    ctx.response_id = rid if isinstance(rid, str) else None
    if ctx.usage is None:
        for text in output_texts(answer.get("output")):
            ctx.meter.feed(text)


def output_texts(output: Any) -> list[str]:
    """The texts of a response's `output` items (messages' text parts, function call arguments)."""
    texts: list[str] = []
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("arguments"), str):
            texts.append(item["arguments"])
        content = item.get("content")
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return texts


class ResponsesTap:
    """The StreamTap of /responses (same interface, proxy/gateway/sse.py): forwards events as they complete,
    meters delta events, takes the usage from `response.completed` (without LiteLLM's cost), remembers the
    response id, and swallows an error event (the passthrough ends the stream with the gateway's own)."""

    __slots__ = ("_ctx", "_meter", "_tail", "saw_done", "upstream_error")

    def __init__(self, ctx: RequestContext) -> None:
        self._ctx = ctx
        self._meter: OutputMeter = ctx.meter
        self._tail = b""
        self.saw_done = False
        self.upstream_error: Any = None

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward for this chunk (possibly empty while an event is incomplete)."""
        events, _, self._tail = split_events(self._tail, chunk)
        return b"".join(self._event(e) for e in events)

    def leftover(self) -> bytes:
        """An incomplete last event when the stream ended (observed, then forwarded)."""
        tail, self._tail = self._tail, b""
        return self._event(tail.rstrip(b"\n")) if tail.strip() else b""

    def _event(self, event: bytes) -> bytes:
        if self.upstream_error is not None:  # LiteLLM follows its error event with [DONE]: the stream failed
            return b""
        if event.startswith(_DONE):
            self.saw_done = True
            return event + b"\n\n"
        delta = any(kind in event for kind in _DELTAS)
        if not delta and b'"usage"' not in event and b'"error"' not in event and b'"response.created"' not in event:
            return event + b"\n\n"
        start = event.find(b"data:")
        obj = _data(event[start + 5 :]) if start >= 0 else None
        if obj is None:
            return event + b"\n\n"
        kind = obj.get("type")
        if (kind is None and "error" in obj) or kind in ("error", "response.failed"):
            self.upstream_error = obj.get("error") or obj.get("response") or kind
            return b""
        if delta and isinstance(obj.get("delta"), str):
            self._meter.feed(obj["delta"])
            return event + b"\n\n"
        response = obj.get("response")
        if not isinstance(response, dict):
            return event + b"\n\n"
        if kind == "response.created" and isinstance(response.get("id"), str):
            self._ctx.response_id = response["id"]
        usage = response.get("usage")
        if not isinstance(usage, dict):
            return event + b"\n\n"
        if kind in _FINAL:  # the answer is whole: LiteLLM's [DONE] may follow, a provider's own stream ends here
            self._ctx.usage = usage_from(usage)
            self.saw_done = True
        response["usage"] = strip_cost(usage)
        return event[:start] + b"data: " + orjson.dumps(obj) + b"\n\n"  # an `event:` line before it is kept


def _data(raw: bytes) -> dict[str, Any] | None:
    """The JSON object of one SSE event's data."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None
