"""GET and DELETE /v1/responses/{response_id}: the caller's own stored responses, through LiteLLM.

Only an id the gateway recorded for the caller in their active org (policies/responses.py records every
response served on POST /v1/responses) is forwarded to LiteLLM, with the platform's key; any other id is
404 `response_not_found` without asking LiteLLM, the same answer whether it exists elsewhere or not.
Neither is billed: no model runs (reading or deleting a stored response costs the provider no tokens).
LiteLLM's answer passes without its internals (`usage.cost`, its headers); its errors are translated in
the one place the passthrough uses (proxy/gateway/upstream_errors.py). A DELETE that LiteLLM accepted
forgets the id, so the caller's later requests for it are 404 here too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from proxy.api.jsonapi import json_response
from proxy.caller.common import Identify, both, membership
from proxy.directory.responses import ResponseOwners
from proxy.errors import ProxyError
from proxy.gateway.body import answer_object
from proxy.gateway.sse import strip_cost
from proxy.gateway.upstream_errors import from_litellm

Fetch = Callable[..., Awaitable[tuple[int, Mapping[str, str], bytes]]]
"""`(path, method=...) -> (status, headers, body)`: Upstream.get, LiteLLM with the platform's key."""


def response_routes(*, identify: Identify, owners: ResponseOwners, fetch: Fetch) -> list[BaseRoute]:
    """GET and DELETE /responses/{response_id} under both client prefixes."""

    async def one(request: Request) -> Response:
        ctx = await identify(request)
        member = membership(ctx)
        response_id: str = request.path_params["response_id"]
        if not await owners.owned(member.org_id, member.user_id, response_id):
            raise ProxyError.not_found("response_not_found", f"No response '{response_id[:64]}' found.")
        method = request.method
        status, headers, raw = await fetch("/v1/responses/" + quote(response_id, safe=""), method=method)
        if status == 404:  # the provider no longer has it (or never kept it: LiteLLM's bridge stores none)
            raise ProxyError.not_found("response_not_found", f"No response '{response_id[:64]}' found.")
        if status != 200:
            raise from_litellm(status, raw, headers, ctx)
        answer = _without_internals(raw)
        if method == "DELETE":
            await owners.forget(member.org_id, member.user_id, response_id)
        return json_response(answer)

    return both("/responses/{response_id}", one, ["GET", "DELETE"])


def _without_internals(raw: bytes) -> Any:
    """LiteLLM's answer without its cost fields; an unreadable one is the upstream's failure (502)."""
    answer = answer_object(raw)
    for key in ("response_cost", "_hidden_params", "provider_specific_fields"):
        answer.pop(key, None)
    if isinstance(answer.get("usage"), dict):
        answer["usage"] = strip_cost(answer["usage"])
    return answer
