"""The caller's own endpoints: credits, history, usage, one request's record, the disabled purchase.

`caller_routes(...)` is the one factory the app mounts: these routes plus the models routes
(proxy/caller/models.py) and the BYOK key routes (proxy/caller/byok.py), each under `/v1` and
`/api/v1/llm`. Every route first runs `identify` (Authenticate + ResolveOrg, supplied by the app),
so it acts for the API key's user in the active org; errors are `ProxyError`s the app renders.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from proxy.api.answers import RequestRecord
from proxy.api.jsonapi import json_response, page, query_choice, time_window
from proxy.api.stores import LedgerAdmin
from proxy.api.usage import MAX_GROUPS, attribution_filters, bounded, usage_csv
from proxy.caller.byok import ByokDirectory, Probe, byok_routes
from proxy.caller.common import Identify, both, checked, membership
from proxy.caller.models import model_routes
from proxy.config.live import LiveConfig
from proxy.db.pool import serial_cursor
from proxy.directory.crypto import KeyBox
from proxy.errors import ProxyError

USAGE_GROUPS = ("model", "day", "end_user", "tag", "power_level")
MAX_REQUEST_ID = 64
# the ids the gateway records: a client's safe X-Request-Id or a generated req_ (proxy/gateway/headers.py)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def caller_routes(
    *,
    identify: Identify,
    ledger: LedgerAdmin,
    directory: ByokDirectory,
    config: LiveConfig,
    keybox: KeyBox,
    probe: Probe,
    created: int,
) -> list[BaseRoute]:
    """All caller routes. `config` (its current snapshot, per request) says which models exist and which
    tiers may use them, `keybox` seals BYOK keys, `probe(model, key)` is the one-token test call to LiteLLM
    (proxy/caller/probe.py), `created` the `created` stamp of model objects (when the model list was
    loaded). Every route authenticates first, then checks its path and query values."""
    identify = checked(identify)
    return [
        *credit_routes(identify=identify, ledger=ledger),
        *model_routes(identify=identify, directory=directory, config=config, created=created),
        *byok_routes(identify=identify, ledger=ledger, directory=directory, config=config, keybox=keybox,
                     probe=probe),
    ]


def credit_routes(*, identify: Identify, ledger: LedgerAdmin) -> list[BaseRoute]:
    """GET /credits, /credits/history, /usage, /usage.csv, /requests/{id}; POST /credits/purchase (410)."""

    async def credits(request: Request) -> Response:
        ctx = await identify(request)
        member = membership(ctx)
        key_id = ctx.key.id if ctx.key is not None else None
        return json_response(await ledger.credits(member.org_id, member.user_id, key_id))

    async def history(request: Request) -> Response:
        member = membership(await identify(request))
        limit, after = page(request.query_params, serial_cursor)
        rows, has_more = await ledger.entries(member.org_id, user_id=member.user_id, limit=limit, after=after)
        return json_response({"data": list(rows), "has_more": has_more})

    async def usage(request: Request) -> Response:
        member = membership(await identify(request))
        params = request.query_params
        group_by = query_choice(params, "group_by", USAGE_GROUPS, "model")
        start, end = time_window(params)
        end_user, tag = attribution_filters(params)
        rows = await ledger.usage(member.org_id, group_by=group_by, user_id=member.user_id, start=start, end=end,
                                  end_user=end_user, tag=tag, limit=MAX_GROUPS)
        data, has_more = bounded(rows)
        return json_response({"data": data, "has_more": has_more})

    async def records_csv(request: Request) -> Response:
        """The caller's own usage records as a CSV download (proxy/api/usage.py), org admins included."""
        member = membership(await identify(request))
        return await usage_csv(ledger, member.org_id, member.user_id, request.query_params,
                               f"{member.org_id}_{member.user_id}")

    async def one_request(request: Request) -> Response:
        member = membership(await identify(request))
        request_id: str = request.path_params["request_id"]
        row = None
        if _REQUEST_ID.fullmatch(request_id):  # no other id was ever recorded: not worth a query
            row = await ledger.request(member.org_id, request_id)
        # members see their own requests, org admins their org's; anything else looks absent
        if row is None or (row.get("user_id") != member.user_id and member.role != "admin"):
            raise ProxyError.not_found("request_not_found", f"No request '{request_id[:MAX_REQUEST_ID]}' found.")
        # exactly the declared fields (CONTRACT.md); the ledger's row also carries user_id
        shown: dict[str, Any] = {name: row.get(name) for name in RequestRecord.__struct_fields__}
        return json_response(RequestRecord(**shown))

    async def purchase(request: Request) -> Response:
        await identify(request)
        raise ProxyError.purchases_disabled()

    return [
        *both("/credits", credits, ["GET"]),
        *both("/credits/history", history, ["GET"]),
        *both("/credits/purchase", purchase, ["POST"]),
        *both("/usage", usage, ["GET"]),
        *both("/usage.csv", records_csv, ["GET"]),
        *both("/requests/{request_id}", one_request, ["GET"]),
    ]
