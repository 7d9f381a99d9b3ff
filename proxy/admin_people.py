"""Admin routes of people and their keys: users, memberships, API keys.

Users are the operator's. Org admins manage their own org's members and the keys bound to their
org; keys not bound to an org reach every org of their user, so only the operator creates, lists
across orgs, or revokes those. A created key is in the creating response only; listings show its
prefix. A revocation is broadcast through `on_revoke` (the key's hash) so every replica drops it.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from proxy.admin_auth import Caller
from proxy.admin_deps import AdminDeps
from proxy.admin_input import Body, json_response, listing, page, path_id, query_id
from proxy.errors import ProxyError
from proxy.stores import Row

log = logging.getLogger(__name__)
ROLES = ("member", "admin")
PERIODS = ("none", "day", "week", "month")
MEMBER_FIELDS = ("role", "allocation_millicredits", "allocation_period", "default", "power_level", "suspended")


class PeopleRoutes:
    def __init__(self, deps: AdminDeps) -> None:
        self.d = deps

    # ------------------------------------------------------------------ users (operator)

    async def create_user(self, request: Request) -> Response:
        caller = await self.d.auth.operator(request)
        body = await Body.read(request, ("email", "name"))
        email = body.email("email")
        name = body.text("name", required=False)
        return json_response(await self.d.directory.create_user(email, name, caller.actor), 201)

    async def list_users(self, request: Request) -> Response:
        await self.d.auth.operator(request)
        limit, after = page(request)
        email = request.query_params.get("email")
        rows, has_more = await self.d.directory.list_users(limit, after, email.strip().lower() if email else None)
        return listing(rows, has_more)

    # ------------------------------------------------------------------ members

    async def put_member(self, request: Request) -> Response:
        """Upserts the membership; only the fields sent change an existing one."""
        caller, org_id = await self.d.auth.org_admin(request)
        user_id = path_id(request, "user", "usr")
        body = await Body.read(request, MEMBER_FIELDS)
        values = {
            "role": body.choice("role", ROLES),
            "allocation_millicredits": body.limit_or_null("allocation_millicredits"),
            "allocation_period": body.choice("allocation_period", PERIODS),
            "default": body.boolean("default"),
            "power_level": body.choice("power_level", self.d.power_levels, nullable=True),
            "suspended": body.boolean("suspended"),
        }
        # null keeps the current value, except where null is a value (unlimited, no default level)
        nullable = ("allocation_millicredits", "power_level")
        fields = {k: v for k, v in values.items() if body.has(k) and (v is not None or k in nullable)}
        return json_response(await self.d.directory.put_member(org_id, user_id, fields, caller.actor))

    async def delete_member(self, request: Request) -> Response:
        caller, org_id = await self.d.auth.org_admin(request)
        user_id = path_id(request, "user", "usr")
        if not await self.d.directory.delete_member(org_id, user_id, caller.actor):
            raise ProxyError.not_found("member_not_found", "That user is not a member of this organization.")
        return json_response({"org_id": org_id, "user_id": user_id, "deleted": True})

    # ------------------------------------------------------------------ API keys

    @staticmethod
    def _implied_org(caller: Caller, org_id: str | None) -> str | None:
        """An org admin who names no org means the org their own key is bound to (if it is)."""
        if org_id is None and caller.key is not None:
            return caller.key.bound_org_id
        return org_id

    async def _key_org(self, caller: Caller, org_id: str | None) -> None:
        """Org admins act only on keys bound to an org they administer."""
        if caller.is_operator:
            return
        if org_id is None:
            raise ProxyError.permission("operator_only", "Only the operator manages keys not bound to an org.")
        await self.d.auth.admin_of(caller, org_id)

    async def create_key(self, request: Request) -> Response:
        caller = await self.d.auth.caller(request)
        body = await Body.read(request, ("user_id", "org_id", "name"))
        user_id = body.ident("user_id", "usr")
        org_id = self._implied_org(caller, body.ident_or_none("org_id", "org"))
        name = body.text("name", required=False)
        await self._key_org(caller, org_id)
        return json_response(await self.d.directory.create_key(user_id, org_id, name, caller.actor), 201)

    async def list_keys(self, request: Request) -> Response:
        """Keys (prefix only), by `user_id` and/or `org_id`; an org admin sees their org's only."""
        caller = await self.d.auth.caller(request)
        user_id = query_id(request, "user_id", "usr")
        org_id = self._implied_org(caller, query_id(request, "org_id", "org"))
        await self._key_org(caller, org_id)
        limit, after = page(request)
        rows, has_more = await self.d.directory.list_keys(user_id, org_id, limit, after)
        return listing(rows, has_more)

    async def revoke_key(self, request: Request) -> Response:
        caller = await self.d.auth.caller(request)
        key_id = path_id(request, "key", "key")
        key = await self.d.directory.get_key(key_id)
        if key is None:
            if not caller.is_operator:  # an org admin learns nothing about keys outside their org
                raise ProxyError.permission("not_a_member", "That key is not in an organization you administer.")
            raise ProxyError.not_found("key_not_found", "Unknown API key.")
        await self._key_org(caller, key["org_id"])
        key_hash = await self.d.directory.revoke_key(key_id, caller.actor)
        if key_hash is None:  # pragma: no cover - keys are never deleted
            raise ProxyError.not_found("key_not_found", "Unknown API key.")
        await self._broadcast(key_hash)
        revoked: Row | None = await self.d.directory.get_key(key_id)
        return json_response(revoked)

    async def _broadcast(self, key_hash: str) -> None:
        try:
            await self.d.on_revoke(key_hash)
        except Exception as exc:  # the revocation is stored; a retry of the DELETE broadcasts it again
            log.warning("revocation broadcast failed: %s", type(exc).__name__)
            raise ProxyError(
                503,
                "service_unavailable",
                "revocation_not_broadcast",
                "The key is revoked but not every replica could be told yet; retry the DELETE.",
            ) from None
