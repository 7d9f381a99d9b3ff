"""A cheap tap on LiteLLM's SSE stream: forwards events as they complete and observes usage.

`StreamTap.feed(chunk)` returns the bytes to send to the client now: every event completed by this
chunk (an incomplete tail waits for the next chunk). On the way it
- feeds the delta text of content events to `ctx.meter` (orjson only; a stream cut short still has
  an estimate),
- records `ctx.usage` from the event carrying `"usage"` and re-emits it, with `choices: []` and
  without `usage.cost`, only when the client asked for usage (LiteLLM always gets include_usage and
  sends `choices: [{"index":0,"delta":{}}]` with a `cost`: litellm-captures/04, /06),
- swallows LiteLLM's own mid-stream `data: {"error": ...}` event (it leaks internals); the
  passthrough ends such a stream with the gateway's error event instead and no `[DONE]`.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.gateway.context import OutputMeter, RequestContext, Usage

_DONE = b"data: [DONE]"


def usage_from(raw: Any) -> Usage | None:
    """A `Usage` from an OpenAI/LiteLLM usage object (chat, completions, embeddings, images)."""
    if not isinstance(raw, dict):
        return None
    prompt = raw.get("prompt_tokens", raw.get("input_tokens", 0))
    completion = raw.get("completion_tokens", raw.get("output_tokens", 0))
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
        return None
    return Usage(prompt, completion)


def strip_cost(usage: dict[str, Any]) -> dict[str, Any]:
    """The usage object without LiteLLM's cost fields (`cost` and anything named `*cost*`)."""
    return {k: v for k, v in usage.items() if "cost" not in k}


def _choice_text(choice: Any) -> str:
    if not isinstance(choice, dict):
        return ""
    delta = choice.get("delta")
    if isinstance(delta, dict):
        parts = [delta.get("content"), delta.get("reasoning_content")]
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                parts.append(call["function"].get("arguments"))
        return "".join(p for p in parts if isinstance(p, str))
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def _meaningful(choice: Any) -> bool:
    """A choice worth keeping when the usage event is rewritten: it carries text or a finish reason."""
    return isinstance(choice, dict) and (bool(_choice_text(choice)) or choice.get("finish_reason") is not None)


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def split_events(tail: bytes, chunk: bytes) -> tuple[list[bytes], bytes, bytes]:
    """The complete SSE events in `tail + chunk` (CRLF made LF), the bytes they span, and the incomplete
    rest to keep for the next chunk."""
    data = tail + chunk if tail else chunk
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    end = data.rfind(b"\n\n")
    if end < 0:
        return [], b"", data
    complete = data[: end + 2]
    events = complete.split(b"\n\n")
    events.pop()  # the empty piece after the last separator
    return events, complete, data[end + 2 :]


class StreamTap:
    """Splits SSE events across chunk boundaries and observes them for one request."""

    __slots__ = ("_ctx", "_meter", "_tail", "saw_done", "upstream_error")

    def __init__(self, ctx: RequestContext) -> None:
        self._ctx = ctx
        self._meter: OutputMeter = ctx.meter
        self._tail = b""
        self.saw_done = False
        self.upstream_error: Any = None  # LiteLLM's mid-stream error object, if one came

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward for this chunk (possibly empty while an event is incomplete)."""
        events, complete, self._tail = split_events(self._tail, chunk)
        if not events:
            return b""
        if b'"usage"' in complete or b'"error"' in complete or _DONE in complete:
            return b"".join(self._event(e) for e in events)
        for event in events:
            if not self._meter_fast(event):
                self._observe(event)
        return complete

    def _meter_fast(self, event: bytes) -> bool:
        """Meter a plain one-choice content event without parsing it; False when it is not one."""
        start = event.find(b'"content":"')
        if start < 0 or b'"tool_calls"' in event or b'"reasoning' in event:
            return False
        start += 11
        end = event.find(b'"', start)
        piece = event[start:end]
        if end < 0 or b"\\" in piece or event.find(b'"content":"', end) >= 0:
            return False  # escapes or several choices: let orjson read it
        if piece:
            self._meter.feed(piece.decode("utf-8", "replace"))
        return True

    def _observe(self, event: bytes) -> dict[str, Any] | None:
        """Parse a data event and meter its text; returns the parsed object (or None)."""
        if not event.startswith(b"data:"):
            return None
        try:
            obj = orjson.loads(event[5:])
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict):
            return None
        choices = obj.get("choices")
        if isinstance(choices, list):
            text = "".join(_choice_text(c) for c in choices)
            if text:
                self._meter.feed(text)
        return obj

    def _event(self, event: bytes) -> bytes:
        """One complete event, rewritten where needed."""
        if event.startswith(_DONE):
            self.saw_done = True
            return event + b"\n\n"
        if b'"usage"' not in event and b'"error"' not in event:
            if not self._meter_fast(event):
                self._observe(event)
            return event + b"\n\n"
        obj = self._observe(event)
        if obj is None:
            return event + b"\n\n"
        if "error" in obj and "choices" not in obj:
            self.upstream_error = obj["error"]
            return b""
        if "usage" not in obj:
            return event + b"\n\n"
        return self._usage_event(obj)

    def _usage_event(self, obj: dict[str, Any]) -> bytes:
        raw = obj.pop("usage", None)
        usage = usage_from(raw)
        if usage is not None:
            self._ctx.usage = usage
        out = b""
        choices = obj.get("choices")
        kept = [c for c in choices if _meaningful(c)] if isinstance(choices, list) else []
        if kept:  # a provider that puts usage on a content chunk: keep the content, move the usage
            out += _event({**obj, "choices": kept})
        if self._ctx.client_wants_usage and isinstance(raw, dict):
            out += _event({**obj, "choices": [], "usage": strip_cost(raw)})
        return out

    def leftover(self) -> bytes:
        """An incomplete last event when the stream ended (forwarded as-is, after observing it)."""
        tail, self._tail = self._tail, b""
        if not tail.strip():
            return b""
        return self._event(tail.rstrip(b"\n"))
