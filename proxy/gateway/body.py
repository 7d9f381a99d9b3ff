"""Reading and checking the client's JSON body, and observing LiteLLM's whole (non-stream) answer.

Every malformed input is a 400/413 ProxyError, never a 500: body over the limit -> 413
`body_too_large` (Content-Length checked first, then bytes counted); not JSON -> `invalid_json`;
not an object or a wrongly typed field -> `invalid_value` with `param`; no `model` (or no
`messages` / `prompt` / `input` for the route) -> `missing_field`.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import orjson
from starlette.types import Receive, Scope

from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext, Usage
from proxy.gateway.responses import ROUTE as RESPONSES
from proxy.gateway.responses import observe_response
from proxy.gateway.sse import strip_cost, usage_from

_REQUIRED = {"chat/completions": "messages", "completions": "prompt", "embeddings": "input",
             "images/generations": "prompt", "responses": "input"}
_POSITIVE_INTS = ("n", "max_tokens", "max_completion_tokens", "best_of")
# OpenAI's own ceilings (API reference): choices per chat or completion, candidates per completion,
# images per generation. A larger count is refused before it reaches the hold's arithmetic.
_MAX_COUNTS = {"n": 128, "best_of": 20}
_MAX_IMAGES = 10
_MAX_OUTPUT_TOKENS = 10_000_000  # far above any model's; the power level clamps what is sent
# JSON nesting: tool schemas and structured outputs are a few levels deep (OpenAI allows 10 in a
# schema); deeper input only exhausts recursion in whoever walks it next
MAX_DEPTH = 64
_INTS = ("seed", "dimensions", "top_logprobs")  # integers a provider reads as such; orjson makes huge ones floats
_I64 = -(2**63)
# After answering 413 we still read (and drop) this much of an oversized body, so the client gets
# the answer instead of a reset connection while it is still writing.
_DRAIN_LIMIT = 64 * 1024 * 1024


class ClientGone(Exception):
    """The client disconnected before its body was read."""


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, at most `limit` bytes (else 413 body_too_large)."""
    declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    if declared is not None and declared.isdigit() and int(declared) > limit:
        await _drain(receive, int(declared))
        raise ProxyError.body_too_large(limit)
    parts: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            if more:
                await _drain(receive, _DRAIN_LIMIT)
            raise ProxyError.body_too_large(limit)
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _drain(receive: Receive, budget: int) -> None:
    seen = 0
    while seen <= min(budget, _DRAIN_LIMIT):
        message = await receive()
        seen += len(message.get("body", b""))
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


def positive_int(value: object) -> TypeGuard[int]:
    """A JSON integer above 0 (a bool is not one): counts and output caps."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def parse_request(raw: bytes, route: str) -> tuple[dict[str, Any], bool]:
    """The body as a dict and whether it asks for a stream; raises ProxyError on bad input."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProxyError.invalid_json() from None
    if not isinstance(body, dict):
        raise ProxyError.invalid_value(None, "The request body must be a JSON object.")
    if too_deep(body, MAX_DEPTH):
        raise ProxyError.invalid_value(None, f"The request body is nested more than {MAX_DEPTH} levels deep.")
    model = body.get("model")
    if model is None:
        raise ProxyError.missing_field("model")
    if not isinstance(model, str) or not model.strip():
        raise ProxyError.invalid_value("model", "'model' must be a non-empty string.")
    required = _REQUIRED[route]
    if body.get(required) is None:
        raise ProxyError.missing_field(required)
    if route == "chat/completions":
        messages = body["messages"]
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise ProxyError.invalid_value("messages", "'messages' must be a non-empty list of message objects.")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ProxyError.invalid_value("stream", "'stream' must be a boolean.")
    for name in _POSITIVE_INTS:
        if body.get(name) is not None and not positive_int(body[name]):
            raise ProxyError.invalid_value(name, f"'{name}' must be a positive integer.")
    for name, most in ((*_MAX_COUNTS.items(),) if route != "images/generations" else (("n", _MAX_IMAGES),)):
        if body.get(name) is not None and body[name] > most:
            raise ProxyError.invalid_value(name, f"'{name}' must be at most {most}.")
    for name in _INTS:
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not _I64 <= value < -_I64):
            raise ProxyError.invalid_value(name, f"'{name}' must be a 64-bit integer.")
    if route == "responses" and body.get("max_output_tokens") is not None:
        if not positive_int(body["max_output_tokens"]):
            raise ProxyError.invalid_value("max_output_tokens", "'max_output_tokens' must be a positive integer.")
    for name in ("max_tokens", "max_completion_tokens", *(("max_output_tokens",) if route == "responses" else ())):
        if body.get(name) is not None and body[name] > _MAX_OUTPUT_TOKENS:
            raise ProxyError.invalid_value(name, f"'{name}' must be at most {_MAX_OUTPUT_TOKENS}.")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ProxyError.invalid_value("stream_options", "'stream_options' must be an object.")
    if isinstance(options, dict) and options.get("include_usage") not in (None, True, False):
        raise ProxyError.invalid_value("stream_options.include_usage", "'include_usage' must be a boolean.")
    if route in ("embeddings", "images/generations") and stream:
        raise ProxyError.invalid_value("stream", f"Streaming is not supported for /{route}.")
    return body, stream is True


def too_deep(value: Any, limit: int) -> bool:
    """True when JSON `value` nests more than `limit` objects/arrays (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def answer_object(raw: bytes) -> dict[str, Any]:
    """LiteLLM's 200 answer as a JSON object; anything else is the upstream's failure (502)."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise ProxyError.upstream_failed("The model service returned an unreadable answer.")
    return answer


def observe_answer(ctx: RequestContext, raw: bytes) -> bytes:
    """Record usage (and the image count) of a whole answer; returns the bytes for the client,
    without LiteLLM's cost fields. A 200 that is not a JSON object is an upstream failure."""
    answer = answer_object(raw)
    usage = answer.get("usage")
    ctx.usage = usage_from(usage)
    if ctx.usage == Usage(0, 0) and ctx.route != "images/generations":
        # LiteLLM 1.106.2 answers usage {0, 0, 0} when the provider sent none (measured through the real
        # LiteLLM: tests/e2e/test_billing.py); no prompt is zero tokens, so that is no count at all
        ctx.usage = None
    if ctx.route == RESPONSES:
        observe_response(ctx, answer)
    elif ctx.route == "images/generations" and isinstance(answer.get("data"), list):
        ctx.image_count = len(answer["data"])
    elif ctx.usage is None:
        _meter_answer(ctx, answer)  # a provider that sent no usage is still charged for what it answered
    changed = _strip_internals(answer)
    if isinstance(usage, dict) and any("cost" in k for k in usage):
        answer["usage"] = strip_cost(usage)
        changed = True
    return orjson.dumps(answer) if changed else raw


def _strip_internals(answer: dict[str, Any]) -> bool:
    """Drop what only LiteLLM adds (cost fields, its `provider_specific_fields`): the client must not
    learn what runs behind the gateway. True when something was removed."""
    changed = False
    for key in ("response_cost", "_hidden_params", "provider_specific_fields"):
        changed |= answer.pop(key, _MISSING) is not _MISSING
    choices = answer.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict):
            changed |= choice.pop("provider_specific_fields", _MISSING) is not _MISSING
            message = choice.get("message")
            if isinstance(message, dict):
                changed |= message.pop("provider_specific_fields", _MISSING) is not _MISSING
    return changed


_MISSING = object()


def _meter_answer(ctx: RequestContext, answer: dict[str, Any]) -> None:
    choices = answer.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict):
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else choice.get("text")
            if isinstance(text, str):
                ctx.meter.feed(text)
