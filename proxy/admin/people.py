"""Admin routes of people and their keys: users, memberships, API keys.

Users are the operator's, and so are adding a user to an org, a member's `default` org and lifting a
suspension the operator set (CONTRACT.md, "Operator's admin API"). Org admins change existing members
of their own org (they may suspend them) and manage keys bound to their org for those members; keys not
bound to an org reach every org of their user, so only the operator creates, lists across orgs, or
revokes those. An org admin never learns whether an id exists outside their org: an unknown user and
someone else's user are the same 404 `member_not_found`, an unknown key and another org's key the same
403 `not_a_member`. A created key is in the creating response only; listings show its prefix. A
revocation, or a change of a key's scope (PATCH), is broadcast through `on_revoke` (the key's hash) so every
replica drops it and reads it again. A key's scope and spend limit (proxy/directory/scopes.py) are set by
whoever may create it: the operator, or an admin of the org it is bound to.
"""

from __future__ import annotations

import logging

import msgspec
from msgspec import UNSET
from starlette.requests import Request
from starlette.responses import Response

from proxy.admin.auth import Caller
from proxy.admin.deps import AdminDeps
from proxy.admin.input import email, email_or_none, path_id
from proxy.admin.orgs import org_not_found
from proxy.api.answers import MemberRemoved
from proxy.api.bodies import CreateKey, CreateUser, PatchKey, PutMember
from proxy.api.jsonapi import id_cursor, json_response, listing, page, query_id
from proxy.db.pool import Row
from proxy.directory.scopes import parse_models, parse_routes
from proxy.directory.types import KeyScope
from proxy.errors import ProxyError

log = logging.getLogger(__name__)
NULLABLE = ("allocation_millicredits", "power_level")


def member_not_found() -> ProxyError:
    return ProxyError.not_found("member_not_found", "That user is not a member of this organization.")


class PeopleRoutes:
    def __init__(self, deps: AdminDeps) -> None:
        self.d = deps

    # ------------------------------------------------------------------ users (operator)

    async def create_user(self, request: Request) -> Response:
        caller = await self.d.auth.operator(request)
        body = await self.d.bodies.read(request, CreateUser)
        created = await self.d.directory.create_user(email(body.email), body.name or "", caller.actor)
        return json_response(created, 201)

    async def list_users(self, request: Request) -> Response:
        await self.d.auth.operator(request)
        limit, after = page(request.query_params, id_cursor("usr"))
        email = email_or_none(request.query_params.get("email"))
        rows, has_more = await self.d.directory.list_users(limit, after, email)
        return listing(rows, has_more)

    # ------------------------------------------------------------------ members

    async def get_member(self, request: Request) -> Response:
        """One member of the org and their allocation this period: limit, used, held, available, period,
        resets_at (millicredits), the very numbers of their own GET /v1/credits. Org admins read their
        own org's members; anyone else's is the same 404 as an unknown id."""
        _, org_id = await self.d.auth.org_admin(request)
        user_id = path_id(request, "user", "usr")
        org = await self.d.directory.get_org(org_id)
        if org is None:
            raise org_not_found()
        member = next((m for m in org["members"] if m["user_id"] == user_id), None)
        if member is None:
            raise member_not_found()
        credits = await self.d.ledger.credits(org_id, user_id)
        return json_response({**member, "org_id": org_id, "allocation": credits["allocation"]})

    async def put_member(self, request: Request) -> Response:
        """The operator upserts the membership; an org admin changes an existing member of their org.
        Only the fields sent change an existing one."""
        caller, org_id = await self.d.auth.org_admin(request)
        user_id = path_id(request, "user", "usr")
        body = await self.d.bodies.read(request, PutMember)
        # null keeps the current value, except where null is a value (unlimited, no default level)
        fields = {k: v for k, v in msgspec.structs.asdict(body).items()
                  if v is not UNSET and (v is not None or k in NULLABLE)}
        if caller.is_operator:
            return json_response(await self.d.directory.put_member(org_id, user_id, fields, caller.actor))
        if body.default is not UNSET:  # refused before the member is looked up: the answer says nothing about them
            raise ProxyError.permission("operator_only", "Only the operator sets a member's default organization.")
        return json_response(await self.d.directory.update_member(org_id, user_id, fields, caller.actor))

    async def delete_member(self, request: Request) -> Response:
        caller, org_id = await self.d.auth.org_admin(request)
        user_id = path_id(request, "user", "usr")
        if not await self.d.directory.delete_member(org_id, user_id, caller.actor):
            raise member_not_found()
        return json_response(MemberRemoved(org_id=org_id, user_id=user_id, deleted=True))

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
        """A key for `user_id`, bound to `org_id` if given. An org admin's key is always bound to their
        org (implied by their own bound key) and only for a member of it."""
        caller = await self.d.auth.caller(request)
        if caller.key is not None and caller.key.bound_org_id is not None:
            await self.d.auth.admin_of(caller, caller.key.bound_org_id)  # a plain member's body is not read
        body = await self.d.bodies.read(request, CreateKey)
        user_id, org_id, name = body.user_id, self._implied_org(caller, body.org_id), body.name or ""
        await self._key_org(caller, org_id)
        if not caller.is_operator and user_id != caller.actor:
            await self._not_another_admin(user_id, org_id)
        scope = KeyScope(parse_models(body.models), parse_routes(body.routes), body.read_only,
                         body.limit_millicredits, body.limit_period)
        try:
            created = await self.d.directory.create_key(user_id, org_id, name, caller.actor, scope)
        except ProxyError as exc:
            if caller.is_operator or exc.code not in ("user_not_found", "org_not_found", "not_a_member"):
                raise
            raise member_not_found() from None  # unknown user or someone else's: one answer
        return json_response(created, 201)

    async def _not_another_admin(self, user_id: str, org_id: str | None) -> None:
        """An org admin mints keys for themselves and for plain members: a key for another admin would let
        them act, and be audited, as that admin. Outsiders get the one answer an unknown id gets."""
        member = next((m for m in await self.d.directory.memberships(user_id) if m.org_id == org_id), None)
        if member is None:
            raise member_not_found()
        if member.role == "admin":
            raise ProxyError.permission("operator_only", "Only the operator may create a key for another admin.")

    async def list_keys(self, request: Request) -> Response:
        """Keys (prefix only), by `user_id` and/or `org_id`; an org admin sees their org's only."""
        caller = await self.d.auth.caller(request)
        user_id = query_id(request.query_params, "user_id", "usr")
        org_id = self._implied_org(caller, query_id(request.query_params, "org_id", "org"))
        await self._key_org(caller, org_id)
        limit, after = page(request.query_params, id_cursor("key"))
        rows, has_more = await self.d.directory.list_keys(user_id, org_id, limit, after)
        return listing(rows, has_more)

    async def _key_in_lane(self, caller: Caller, key_id: str) -> None:
        """The operator reaches any key (404 for an unknown one); an org admin, through a key bound to their
        org, a key bound to that org. Anything else is the same 403 whether the key exists or not."""
        if not caller.is_operator:
            org_id = self._implied_org(caller, None)
            await self._key_org(caller, org_id)  # no org implied: operator_only, before the key is looked up
            key = await self.d.directory.get_key(key_id)
            if key is None or key["org_id"] != org_id:  # an org admin learns nothing about other keys
                raise ProxyError.permission("not_a_member", "That key is not in an organization you administer.")
        elif await self.d.directory.get_key(key_id) is None:
            raise ProxyError.not_found("key_not_found", "Unknown API key.")

    async def update_key(self, request: Request) -> Response:
        """Change a key's name, scope or limit (only the fields sent); in the same lanes as a revocation."""
        caller = await self.d.auth.caller(request)
        key_id = path_id(request, "key", "key")
        await self._key_in_lane(caller, key_id)
        body = await self.d.bodies.read(request, PatchKey)
        changes = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not UNSET}
        if not changes:
            raise ProxyError.invalid_value(None, "Nothing to change: send 'name', 'models', 'routes', 'read_only', "
                                                 "'limit_millicredits' and/or 'limit_period'.")
        if "models" in changes:
            changes["models"] = _listed(parse_models(changes["models"]))
        if "routes" in changes:
            changes["routes"] = _listed(parse_routes(changes["routes"]))
        key_hash = await self.d.directory.update_key(key_id, changes, caller.actor)
        if key_hash is None:  # pragma: no cover - keys are never deleted
            raise ProxyError.not_found("key_not_found", "Unknown API key.")
        await self._broadcast(key_hash, "changed", "PATCH")
        return json_response(await self.d.directory.get_key(key_id))

    async def revoke_key(self, request: Request) -> Response:
        """Revoke a key, in its lanes (`_key_in_lane`)."""
        caller = await self.d.auth.caller(request)
        key_id = path_id(request, "key", "key")
        await self._key_in_lane(caller, key_id)
        key_hash = await self.d.directory.revoke_key(key_id, caller.actor)
        if key_hash is None:  # pragma: no cover - keys are never deleted
            raise ProxyError.not_found("key_not_found", "Unknown API key.")
        await self._broadcast(key_hash)
        revoked: Row | None = await self.d.directory.get_key(key_id)
        return json_response(revoked)

    async def _broadcast(self, key_hash: str, done: str = "revoked", method: str = "DELETE") -> None:
        try:
            await self.d.on_revoke(key_hash)
        except Exception as exc:  # the change is stored; a retry of the request broadcasts it again
            log.warning("key broadcast failed: %s", type(exc).__name__)
            raise ProxyError(
                503,
                "service_unavailable",
                "revocation_not_broadcast",
                f"The key is {done} but not every replica could be told yet; retry the {method}.",
            ) from None


def _listed(values: tuple[str, ...] | None) -> list[str] | None:
    return None if values is None else list(values)
