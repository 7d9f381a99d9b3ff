"""What the caller's own routes share: both URL prefixes, `identify`, scopes. JSON in and out, bounded
bodies, paging and times are one layer with the admin routes (proxy/api/jsonapi.py).

Every caller route is served under `/v1` and `/api/v1/llm` (CONTRACT.md, Client API). Bad input
is always a `ProxyError` (400 invalid_json / missing_field / invalid_value, 413 body_too_large),
never a 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from proxy.api.answers import Scope
from proxy.api.jsonapi import check_params, query_choice
from proxy.directory.scopes import check_route
from proxy.directory.types import Membership
from proxy.errors import ProxyError
from proxy.gateway.context import Policy, RequestContext
from proxy.ops.logs import request_info

PREFIXES = ("/v1", "/api/v1/llm")
SCOPES = ("user", "org")

Identify = Callable[[Request], Awaitable[RequestContext]]
Endpoint = Callable[[Request], Awaitable[Response]]


def identify_with(policies: Sequence[Policy]) -> Identify:
    """An `identify` running `policies` (Authenticate, ResolveOrg) on a fresh context built from the
    request's headers; their ProxyErrors (401, 403) propagate. The context carries no body: these
    routes bill nothing and forward nothing."""

    async def identify(request: Request) -> RequestContext:
        headers = {k.lower(): v for k, v in request.headers.items()}
        info = request_info(request.scope)  # the access log's request id, so policy logs correlate
        ctx = RequestContext(request_id=info.request_id, route="caller", headers=headers, body={})
        for policy in policies:
            await policy(ctx)
        check_route(ctx.key, request.method, request.url.path)  # a scoped key may not reach every route (403)
        if ctx.membership is None:
            raise RuntimeError("identify needs a policy that resolves the org (ResolveOrg)")
        return ctx

    return identify


# a model id is matched against the catalogue in memory: whatever its characters, an unknown one is
# 404 model_not_found, as OpenAI answers it (tests/e2e/test_trust_boundary.py)
IN_MEMORY_PARAMS = ("model_id",)


def checked(identify: Identify) -> Identify:
    """`identify`, then every path and query value free of control characters (400 invalid_value): a
    NUL never reaches PostgreSQL, and a stranger still hears 401 first."""

    async def run(request: Request) -> RequestContext:
        ctx = await identify(request)
        check_params(request, IN_MEMORY_PARAMS)
        return ctx

    return run


def both(path: str, endpoint: Endpoint, methods: Collection[str]) -> list[BaseRoute]:
    """The same endpoint under every client prefix (`path` starts with "/", e.g. "/credits")."""
    return [Route(prefix + path, endpoint, methods=list(methods)) for prefix in PREFIXES]


def membership(ctx: RequestContext) -> Membership:
    """The caller's active membership; `identify` guarantees it, so its absence is a wiring bug."""
    return ctx.require_membership()


def is_admin(member: Membership) -> bool:
    return member.role == "admin"


def scope_of(params: Mapping[str, str], member: Membership) -> Scope:
    """`scope` = "user" (default) or "org"; the org's keys are managed by org admins only (403)."""
    scope: Scope = "org" if query_choice(params, "scope", SCOPES, "user") == "org" else "user"
    require_scope(scope, member)
    return scope


def require_scope(scope: str, member: Membership) -> None:
    if scope == "org" and not is_admin(member):
        raise ProxyError.permission("not_an_org_admin", "Only an organization admin may manage the org's keys.")
