"""The one translation point for failures at the LiteLLM boundary.

`from_client_error` maps aiohttp's exceptions; `from_litellm` maps LiteLLM's JSON errors
(`{"error": {message, type, param, code}}`, `code` the status as a string, `param` sometimes the
string "None": litellm.md §2). A problem of the platform (its upstream key, LiteLLM's database or
budget, a provider 401 for the platform's own key) is never reported as the caller's authentication
error: it is a 502. Messages that reach the client are scrubbed of LiteLLM internals.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext

_NOISE = (
    re.compile(r"\n*\s*LiteLLM:.*", re.S),  # "LiteLLM: model group 'x' failed with the error above ..."
    re.compile(r"\s*Received Model Group=.*", re.S),
    re.compile(r"litellm\.\w+:\s*"),  # "litellm.BadRequestError: "
    re.compile(r"\b\w+(?:Error|Exception)\s*[:-]\s*"),  # "BadRequestError: ", "OpenAIException - "
)
_URL = re.compile(r"\b\w+://\S+")
_KEYISH = re.compile(r"\bsk-[A-Za-z0-9_*-]{3,}")
_DEPLOYMENT = re.compile(r"\b[a-z0-9_]+/[A-Za-z0-9._:-]+")  # "openai/fake-small": a deployment's model


def scrub(message: str, hide: tuple[str, ...] = ()) -> str:
    """LiteLLM's message without its prefixes, URLs, key fragments or the names in `hide`."""
    for pattern in _NOISE:
        message = pattern.sub("", message)
    message = _URL.sub("[url]", message)
    message = _KEYISH.sub("sk-***", message)
    message = _DEPLOYMENT.sub("[deployment]", message)
    for word in hide:
        if word:
            message = message.replace(word, "[deployment]")
    message = message.strip()
    return message[:500] or "The model service rejected the request."


def from_client_error(exc: BaseException) -> ProxyError:
    """aiohttp (and asyncio) exceptions of the upstream call."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return ProxyError.upstream_unreachable()
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return ProxyError.upstream_timeout()
    return ProxyError.upstream_failed()


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    return {}


def _text(value: Any) -> str | None:
    if value is None or value == "None" or value == "":
        return None
    return str(value)


def from_litellm(status: int, body: bytes, headers: Mapping[str, str], ctx: RequestContext) -> ProxyError:
    """LiteLLM's non-200 answer as the contract's error."""
    error = _error_object(body)
    type_ = _text(error.get("type")) or ""
    message = _text(error.get("message")) or ""
    if type_ in ("no_db_connection", "budget_exceeded") or status == 422 and "budget" in type_:
        return ProxyError.upstream_failed()
    if status == 400 and "Invalid model name" in message:
        name = ctx.model or str(ctx.body.get("model", ""))
        return ProxyError.not_found("model_not_found", f"The model '{name}' does not exist.")
    if status in (401, 403):
        if status == 401 and ctx.byok and type_ == "authentication_error":
            return ProxyError.byok_key_rejected(ctx.provider or "provider")
        return ProxyError.upstream_failed()
    if status == 429:
        retry = headers.get("retry-after", "1")
        return ProxyError.rate_limited(int(retry) if retry.isdigit() else 1)
    if status in (408, 504):
        return ProxyError.upstream_timeout()
    if status in (400, 413, 422):
        hide = (ctx.deployment_id,) if ctx.deployment_id else ()
        return ProxyError.invalid_value(_text(error.get("param")), scrub(message, hide))
    return ProxyError.upstream_failed()
