"""The operator's reads of the price versions (proxy/config/live.py): which prices a charge was computed from.

Every hold and usage record names its price version (`price_version` on GET /v1/requests/{id}, on the
ledger's entries, and `group_by=price_version` on usage); these routes show the versions stored and the
table of one: every model's and deployment's prices with where each came from, credits per USD, the tiers'
markups and the power levels' multipliers. Operator only: the table names every model and deployment.
"""

from __future__ import annotations

import json
import re

from starlette.requests import Request
from starlette.responses import Response

from proxy.admin.deps import AdminDeps
from proxy.api.answers import PriceVersion
from proxy.api.jsonapi import json_response, listing, page
from proxy.db.pool import serial_cursor
from proxy.errors import ProxyError

_VERSION = re.compile(r"pv_[0-9a-f]{16}")  # what proxy/config/live.py names (the table's CHECK too)


class PriceRoutes:
    def __init__(self, deps: AdminDeps) -> None:
        self.d = deps

    async def list_all(self, request: Request) -> Response:
        """GET /admin/price-versions: the versions stored, newest first."""
        await self.d.auth.operator(request)
        limit, after = page(request.query_params, serial_cursor)
        rows, has_more = await self.d.ledger.price_versions(limit=limit, after=after)
        return listing(rows, has_more)

    async def get(self, request: Request) -> Response:
        """GET /admin/price-versions/{version}: one version and its table (404 `price_version_not_found`)."""
        await self.d.auth.operator(request)
        version: str = request.path_params["version"]
        row = await self.d.ledger.price_version(version) if _VERSION.fullmatch(version) else None
        if row is None:
            raise ProxyError.not_found("price_version_not_found", f"No price version '{version[:32]}'.")
        return json_response(PriceVersion(id=row["id"], version=row["version"], created_at=row["created_at"],
                                          prices=json.loads(row["prices"])))
