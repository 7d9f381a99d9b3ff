"""Who may call an admin route: the operator (the admin token) or an org admin (their own API key).

The operator's actor is "operator"; an org admin's is their `usr_` id. No or unknown credentials are
401 `invalid_api_key` (a revoked key 401 `revoked_api_key`), whatever the request carries: nothing of
it is read or validated before. A valid caller without the right is 403 `permission_error`:
`operator_only` on the operator's routes, `not_a_member` for another org, an unknown org, or a key bound
to another org (the same answer, so it says nothing about what exists elsewhere), `admin_required` for
a plain member, `suspended` for a suspended admin or org.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request

from proxy.admin.input import path_id
from proxy.api.jsonapi import check_params
from proxy.config.settings import Secret
from proxy.directory.apikeys import hash_key
from proxy.directory.scopes import check_route
from proxy.directory.types import ApiKey, Membership
from proxy.errors import ProxyError

OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Caller:
    actor: str  # "operator" or the org admin's usr_ id
    key: ApiKey | None  # None for the operator

    @property
    def is_operator(self) -> bool:
        return self.key is None


class Authorizer:
    """Resolves the caller of an admin request and checks what they may do."""

    def __init__(
        self,
        admin_token: Secret,
        lookup_key: Callable[[str], Awaitable[ApiKey | None]],
        memberships: Callable[[str], Awaitable[Sequence[Membership]]],
    ) -> None:
        self._token = admin_token.reveal().encode()
        self._lookup_key = lookup_key
        self._memberships = memberships

    async def caller(self, request: Request) -> Caller:
        """The authenticated caller (401 otherwise); says nothing yet about what they may do. Then the
        path and query values are checked for control characters (400), before any store sees them."""
        caller = await self._authenticate(request)
        check_params(request)
        return caller

    async def _authenticate(self, request: Request) -> Caller:
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise ProxyError.invalid_api_key("Missing credentials: send 'Authorization: Bearer <token>'.")
        # compare in constant time so the token cannot be guessed byte by byte
        if hmac.compare_digest(credential.encode(), self._token):
            return Caller(OPERATOR, None)
        key = await self._lookup_key(hash_key(credential))
        if key is None:
            raise ProxyError.invalid_api_key()
        if key.revoked:
            raise ProxyError.revoked_api_key()
        check_route(key, request.method, request.url.path)
        return Caller(key.user_id, key)

    async def operator(self, request: Request) -> Caller:
        caller = await self.caller(request)
        if not caller.is_operator:
            raise ProxyError.permission("operator_only", "Only the operator may do this.")
        return caller

    async def org_admin(self, request: Request, param: str = "org") -> tuple[Caller, str]:
        """The caller and the org named by path parameter `param`: the operator, or an admin of that
        org whose membership and org are not suspended. Authenticates before validating the id."""
        caller = await self.caller(request)
        org_id = path_id(request, param, "org")
        return await self.admin_of(caller, org_id), org_id

    async def admin_of(self, caller: Caller, org_id: str) -> Caller:
        if caller.key is None:
            return caller
        if caller.key.bound_org_id not in (None, org_id):
            raise ProxyError.permission("not_a_member", "This API key is bound to another organization.")
        membership = next((m for m in await self._memberships(caller.key.user_id) if m.org_id == org_id), None)
        if membership is None:
            raise ProxyError.permission("not_a_member", "You are not a member of this organization.")
        if membership.role != "admin":
            raise ProxyError.permission("admin_required", "Only an admin of this organization may do this.")
        if membership.member_suspended or membership.org_suspended:
            raise ProxyError.permission("suspended", "Your membership or this organization is suspended.")
        return caller
