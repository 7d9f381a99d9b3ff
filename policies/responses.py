"""OwnResponses: on /v1/responses, a caller reaches only the responses the gateway served them.

`previous_response_id` makes LiteLLM (with the platform's key) replay a stored conversation: allowed only
when that id was recorded for the caller in their active org (proxy/directory/responses.py), else 400
`invalid_value` naming it, the same answer whether the id exists elsewhere or not, before anything is
held. After a served response its id is recorded for the caller (from the request's cleanup: a non-stream
answer is recorded before it is sent; a stream once it ended). A failed record is logged, never a failed
request: the caller then cannot GET that response, and nothing else changes.
"""

from __future__ import annotations

import logging

from proxy.directory.responses import ResponseOwners
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext
from proxy.gateway.responses import ROUTE

log = logging.getLogger("creditgate.policies")


class OwnResponses:
    def __init__(self, owners: ResponseOwners) -> None:
        self._owners = owners

    async def __call__(self, ctx: RequestContext) -> None:
        if ctx.route != ROUTE:
            return
        member = ctx.require_membership()
        previous = ctx.body.get("previous_response_id")
        if isinstance(previous, str) and not await self._owners.owned(member.org_id, member.user_id, previous):
            raise ProxyError.invalid_value("previous_response_id",
                                           f"No response '{previous[:64]}' found for you in this organization.")
        ctx.cleanup.push_async_callback(self._remember, ctx)

    async def _remember(self, ctx: RequestContext) -> None:
        member, rid = ctx.require_membership(), ctx.response_id
        if rid is None or ctx.upstream_status != 200:
            return
        try:
            await self._owners.remember(member.org_id, member.user_id, ctx.request_id, rid)
        except Exception as exc:  # noqa: BLE001 - the answer was served and settles regardless
            log.warning("could not record response id of request %s: %s", ctx.request_id, type(exc).__name__)
