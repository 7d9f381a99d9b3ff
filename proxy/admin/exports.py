"""Admin routes of the usage export and the budget alerts (proxy/export/).

The dead letters are the operator's: they hold every org's events. An org's alerts and its alert
thresholds are its admins' too (a threshold is a warning preference, not money); every threshold change
is audited with its actor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from msgspec import UNSET
from starlette.requests import Request
from starlette.responses import Response

from proxy.admin.deps import AdminDeps
from proxy.api.bodies import PutAlertThresholds
from proxy.api.jsonapi import json_response, listing, page
from proxy.db.pool import Row, serial_cursor
from proxy.errors import ProxyError


class DeadLetters(Protocol):
    async def dead_letters(self, limit: int, after: str | None) -> tuple[list[Row], bool]: ...

    async def retry(self, event_id: int) -> Row | None: ...


class Alerts(Protocol):
    async def alerts(self, org_id: str, limit: int, after: str | None) -> tuple[list[Row], bool]: ...

    async def thresholds(self, org_id: str) -> Row: ...

    async def set_thresholds(self, org_id: str, pool: Sequence[int] | None,
                             allocation: Sequence[int] | None) -> Row: ...


def dead_letter_not_found() -> ProxyError:
    return ProxyError.not_found("dead_letter_not_found", "No dead-lettered export event has this id.")


class ExportRoutes:
    def __init__(self, deps: AdminDeps, dead: DeadLetters, alerts: Alerts) -> None:
        self.d, self._dead, self._alerts = deps, dead, alerts

    async def _org(self, request: Request) -> tuple[str, str]:
        """The caller's actor and the org (the operator, or an admin of it); 404 for an unknown org."""
        caller, org_id = await self.d.auth.org_admin(request)
        if await self.d.directory.get_org(org_id) is None:
            raise ProxyError.not_found("org_not_found", "Unknown organization.")
        return caller.actor, org_id

    async def dead_letters(self, request: Request) -> Response:
        """GET /admin/export/dead-letters: events no longer retried, newest first, with why."""
        await self.d.auth.operator(request)
        limit, after = page(request.query_params, serial_cursor)
        rows, has_more = await self._dead.dead_letters(limit, after)
        return listing(rows, has_more)

    async def retry(self, request: Request) -> Response:
        """POST /admin/export/dead-letters/{event}/retry: back in the queue, due now, attempts reset."""
        caller = await self.d.auth.operator(request)
        raw: str = request.path_params["event"]
        if not serial_cursor(raw):
            raise ProxyError.invalid_value("event", "'event' must be the id of a dead-lettered event.")
        row = await self._dead.retry(int(raw))
        if row is None:
            raise dead_letter_not_found()
        await self.d.directory.audit(caller.actor, "export.retry", row["org_id"], row["id"],
                                     {"code": row["code"], "transaction_id": row["transaction_id"]})
        return json_response(row)

    async def alerts(self, request: Request) -> Response:
        """GET /admin/orgs/{org}/alerts: the budget alerts fired, newest first."""
        _, org_id = await self._org(request)
        limit, after = page(request.query_params, serial_cursor)
        rows, has_more = await self._alerts.alerts(org_id, limit, after)
        return listing(rows, has_more)

    async def get_thresholds(self, request: Request) -> Response:
        _, org_id = await self._org(request)
        return json_response(await self._alerts.thresholds(org_id))

    async def put_thresholds(self, request: Request) -> Response:
        """PUT /admin/orgs/{org}/alert-thresholds: the scopes sent change (an empty list turns that scope's
        alerts off); the next reserve or settlement is checked against them."""
        actor, org_id = await self._org(request)
        body = await self.d.bodies.read(request, PutAlertThresholds)
        pool = None if body.pool is UNSET else body.pool
        allocation = None if body.allocation is UNSET else body.allocation
        if pool is None and allocation is None:
            raise ProxyError.invalid_value(None, "Nothing to change: send 'pool' and/or 'allocation'.")
        row = await self._alerts.set_thresholds(org_id, pool, allocation)
        await self.d.directory.audit(actor, "org.alert_thresholds", org_id, org_id, row)
        return json_response(row)
