"""Admin routes of organizations: create, list, show (pool and members), change tier or suspension,
fund (grants), correct (adjustments), and read usage and the ledger.

Org admins may read their own org, its usage and its ledger; everything else here is the operator's.
"""

from __future__ import annotations

from datetime import UTC, datetime

from msgspec import UNSET
from starlette.requests import Request
from starlette.responses import Response

from proxy.admin.deps import AdminDeps
from proxy.admin.input import path_id
from proxy.api.bodies import Adjustment, CreateOrg, Grant, PatchOrg
from proxy.api.jsonapi import (
    id_cursor,
    json_response,
    listing,
    page,
    parse_time,
    query_choice,
    query_id,
    time_window,
)
from proxy.api.usage import MAX_GROUPS, attribution_filters, bounded, usage_csv
from proxy.db.pool import Row, serial_cursor
from proxy.errors import ProxyError

GROUPS = ("user", "model", "day", "price_version", "key_id", "end_user", "tag", "power_level")


def org_not_found() -> ProxyError:
    return ProxyError.not_found("org_not_found", "Unknown organization.")


class OrgRoutes:
    def __init__(self, deps: AdminDeps) -> None:
        self.d = deps

    async def _existing(self, org_id: str) -> Row:
        org = await self.d.directory.get_org(org_id)
        if org is None:
            raise org_not_found()
        return org

    async def create(self, request: Request) -> Response:
        caller = await self.d.auth.operator(request)
        body = await self.d.bodies.read(request, CreateOrg)
        return json_response(await self.d.directory.create_org(body.name, body.tier, caller.actor), 201)

    async def list_all(self, request: Request) -> Response:
        await self.d.auth.operator(request)
        limit, after = page(request.query_params, id_cursor("org"))
        rows, has_more = await self.d.directory.list_orgs(limit, after)
        return listing(rows, has_more)

    async def get(self, request: Request) -> Response:
        """The org, its pool, and its members each with their allocation this period (millicredits)."""
        _, org_id = await self.d.auth.org_admin(request)
        org = await self._existing(org_id)
        allocations = await self.d.ledger.allocations(org_id)
        members = []
        for member in org["members"]:
            allocation = allocations.get(member["user_id"])
            if allocation is None:  # joined between the two reads: read it as their own /v1/credits does
                allocation = (await self.d.ledger.credits(org_id, member["user_id"]))["allocation"]
            members.append({**member, "allocation": allocation})
        return json_response({**org, "members": members, "pool": await self.d.ledger.pool(org_id)})

    async def update(self, request: Request) -> Response:
        caller = await self.d.auth.operator(request)
        org_id = path_id(request, "org", "org")
        body = await self.d.bodies.read(request, PatchOrg)
        changes: Row = {"tier": None if body.tier is UNSET else body.tier, "suspended": body.suspended}
        if all(v is None for v in changes.values()):
            raise ProxyError.invalid_value(None, "Nothing to change: send 'tier' and/or 'suspended'.")
        org = await self.d.directory.update_org(org_id, changes, caller.actor)
        if org is None:
            raise org_not_found()
        return json_response(org)

    async def grant(self, request: Request) -> Response:
        """Funds the pool; idempotent by `idempotency_key` (the same key with other fields is 409)."""
        caller = await self.d.auth.operator(request)
        org_id = path_id(request, "org", "org")
        body = await self.d.bodies.read(request, Grant)
        amount, reason, key = body.amount_millicredits, body.reason, body.idempotency_key
        expires_at = None if body.expires_at is None else parse_time(body.expires_at, "expires_at")
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise ProxyError.invalid_value("expires_at", "'expires_at' must be in the future.")
        await self._existing(org_id)
        result = await self.d.ledger.grant(org_id, amount, reason, key, expires_at, caller.actor)
        detail = {"amount_millicredits": amount, "reason": reason, "idempotency_key": key, "expires_at": expires_at}
        await self.d.directory.audit(caller.actor, "org.grant", org_id, key, detail)
        return json_response(result)

    async def adjust(self, request: Request) -> Response:
        """A signed correction (a refund is positive); idempotent by `idempotency_key`."""
        caller = await self.d.auth.operator(request)
        org_id = path_id(request, "org", "org")
        body = await self.d.bodies.read(request, Adjustment)
        amount, reason, key = body.amount_millicredits, body.reason, body.idempotency_key
        await self._existing(org_id)
        result = await self.d.ledger.adjust(org_id, amount, reason, key, caller.actor)
        detail = {"amount_millicredits": amount, "reason": reason, "idempotency_key": key}
        await self.d.directory.audit(caller.actor, "org.adjust", org_id, key, detail)
        return json_response(result)

    async def usage(self, request: Request) -> Response:
        """Usage totals, `group_by` user|model|day|price_version|key_id|end_user|tag|power_level, optionally one
        `user_id`, `end_user` or `tag`, within [start, end) (an empty or reversed window is 400 naming `end`, as on the
        caller's /v1/usage); at most MAX_GROUPS groups (`has_more` when there are more)."""
        _, org_id = await self.d.auth.org_admin(request)
        params = request.query_params
        group_by = query_choice(params, "group_by", GROUPS, "model")
        user_id = query_id(params, "user_id", "usr")
        start, end = time_window(params)
        end_user, tag = attribution_filters(params)
        await self._existing(org_id)
        rows = await self.d.ledger.usage(org_id, group_by=group_by, user_id=user_id, start=start, end=end,
                                         end_user=end_user, tag=tag, limit=MAX_GROUPS)
        return listing(*bounded(rows))

    async def usage_csv(self, request: Request) -> Response:
        """GET /admin/orgs/{org}/usage.csv: the org's usage records in [start, end) as a CSV download
        (proxy/api/usage.py), optionally of one `user_id`, `end_user` or `tag`."""
        _, org_id = await self.d.auth.org_admin(request)
        user_id = query_id(request.query_params, "user_id", "usr")
        await self._existing(org_id)
        return await usage_csv(self.d.ledger, org_id, user_id, request.query_params, org_id)

    async def audit(self, request: Request) -> Response:
        """GET /admin/audit (operator; `org_id` filters) and GET /admin/orgs/{org}/audit (org admins):
        who changed what, newest first."""
        org_id: str | None
        if "org" in request.path_params:
            _, org_id = await self.d.auth.org_admin(request)
            await self._existing(org_id)
        else:
            await self.d.auth.operator(request)
            org_id = query_id(request.query_params, "org_id", "org")
        limit, after = page(request.query_params, serial_cursor)
        rows, has_more = await self.d.directory.list_audit(org_id, limit, after)
        return listing(rows, has_more)

    async def ledger(self, request: Request) -> Response:
        """The org's journal, newest first, optionally one member's entries (`user_id`)."""
        _, org_id = await self.d.auth.org_admin(request)
        user_id = query_id(request.query_params, "user_id", "usr")
        limit, after = page(request.query_params, serial_cursor)
        await self._existing(org_id)
        rows, has_more = await self.d.ledger.entries(org_id, user_id=user_id, limit=limit, after=after)
        return listing(list(rows), has_more)
