"""What the caller's own routes share: both URL prefixes, JSON in and out, query parsing.

Every caller route is served under `/v1` and `/api/v1/llm` (CONTRACT.md, Client API). Bad input
is always a `ProxyError` (400 invalid_json / missing_field / invalid_value), never a 500.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from proxy.context import Membership, Policy, RequestContext
from proxy.errors import ProxyError
from proxy.logs import request_info

PREFIXES = ("/v1", "/api/v1/llm")
SCOPES = ("user", "org")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_BODY_BYTES = 64 * 1024

Identify = Callable[[Request], Awaitable[RequestContext]]
Endpoint = Callable[[Request], Awaitable[Response]]

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def identify_with(policies: Sequence[Policy]) -> Identify:
    """An `identify` running `policies` (Authenticate, ResolveOrg) on a fresh context built from the
    request's headers; their ProxyErrors (401, 403) propagate. The context carries no body: these
    routes bill nothing and forward nothing."""

    async def identify(request: Request) -> RequestContext:
        headers = {k.lower(): v for k, v in request.headers.items()}
        info = request_info(request.scope)  # the access log's request id, so policy logs correlate
        ctx = RequestContext(request_id=info.request_id, route="caller", headers=headers, body={},
                             request_id_from_client=info.from_client)
        for policy in policies:
            await policy(ctx)
        if ctx.membership is None:
            raise RuntimeError("identify needs a policy that resolves the org (ResolveOrg)")
        return ctx

    return identify


def both(path: str, endpoint: Endpoint, methods: Collection[str]) -> list[BaseRoute]:
    """The same endpoint under every client prefix (`path` starts with "/", e.g. "/credits")."""
    return [Route(prefix + path, endpoint, methods=list(methods)) for prefix in PREFIXES]


def _default(value: object) -> object:
    # amounts are ints; a Decimal from the database is whole millicredits or an exact price
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def json_response(body: object, status: int = 200) -> Response:
    """orjson-encoded JSON (datetimes as RFC 3339, Decimals as exact numbers)."""
    return Response(orjson.dumps(body, default=_default), status_code=status, media_type="application/json")


async def read_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object; 400 invalid_json otherwise, 413 past `MAX_BODY_BYTES`
    (these bodies are a few fields: read no more than that, whatever Content-Length says)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ProxyError.body_too_large(MAX_BODY_BYTES)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProxyError.invalid_json() from None
    if not isinstance(body, dict):
        raise ProxyError.invalid_json("The request body must be a JSON object.")
    return body


def membership(ctx: RequestContext) -> Membership:
    """The caller's active membership; `identify` guarantees it, so its absence is a wiring bug."""
    return ctx.require_membership()


def is_admin(member: Membership) -> bool:
    return member.role == "admin"


def query_limit(params: Mapping[str, str]) -> tuple[int, str | None]:
    """`limit` (1..500, default 50) and `after` (an opaque cursor) of a listing."""
    raw = params.get("limit")
    limit = DEFAULT_LIMIT
    if raw is not None:
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise ProxyError.invalid_value("limit", f"'limit' must be an integer from 1 to {MAX_LIMIT}.")
        limit = int(raw)
    after = params.get("after")
    if after is not None and not 1 <= len(after) <= 200:
        raise ProxyError.invalid_value("after", "'after' must be a cursor from a previous page.")
    return limit, after


def query_time(params: Mapping[str, str], name: str) -> datetime | None:
    """An RFC 3339 timestamp with an offset, as an aware UTC datetime; absent -> None."""
    raw = params.get(name)
    if raw is None:
        return None
    if not _RFC3339.match(raw):
        raise ProxyError.invalid_value(name, f"'{name}' must be an RFC 3339 timestamp, e.g. 2026-01-31T00:00:00Z.")
    try:
        value = datetime.fromisoformat(raw.upper().replace("Z", "+00:00"))
    except ValueError:
        raise ProxyError.invalid_value(name, f"'{name}' is not a valid date and time.") from None
    return value.astimezone(UTC)


def query_choice(params: Mapping[str, str], name: str, choices: Collection[str], default: str) -> str:
    value = params.get(name, default)
    if value not in choices:
        allowed = ", ".join(f"'{c}'" for c in choices)
        raise ProxyError.invalid_value(name, f"'{name}' must be one of {allowed}.")
    return value


def scope_of(params: Mapping[str, str], member: Membership) -> str:
    """`scope` = "user" (default) or "org"; the org's keys are managed by org admins only (403)."""
    scope = query_choice(params, "scope", SCOPES, "user")
    require_scope(scope, member)
    return scope


def require_scope(scope: str, member: Membership) -> None:
    if scope == "org" and not is_admin(member):
        raise ProxyError.permission("not_an_org_admin", "Only an organization admin may manage the org's keys.")
