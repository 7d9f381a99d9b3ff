"""ResolveOrg: which organization pays for this request (CONTRACT.md, Client API, Organization)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from proxy.directory.types import Directory, Membership
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext

log = logging.getLogger("creditgate.policies")

ORG_HEADERS = ("openai-organization", "x-org-id")


class ResolveOrg:
    """Sets `ctx.membership`, in the contract's order: the key's bound org; else the
    `OpenAI-Organization` / `X-Org-Id` header; else the member's default org; else their only org;
    else 403 `no_organization`. A header naming an unknown org, one the user is not in, or one other
    than the key's bound org is 403 `not_a_member`; a suspended org or member is 403 `suspended`."""

    reads_body = False  # runs before the body is read (proxy/gateway/passthrough.py)

    def __init__(self, directory: Directory) -> None:
        self._directory = directory

    async def __call__(self, ctx: RequestContext) -> None:
        key = ctx.require_key()
        try:
            memberships = await self._directory.memberships(key.user_id)
        except ProxyError:
            raise
        except Exception as exc:  # fail closed: no org can be resolved without the directory
            log.error("membership lookup failed: %s", type(exc).__name__)
            raise ProxyError.ledger_unavailable() from None
        requested = next((ctx.headers[h].strip() for h in ORG_HEADERS if ctx.headers.get(h, "").strip()), None)
        member = _choose(memberships, key.bound_org_id, requested)
        if member.org_suspended:
            raise ProxyError.permission("suspended", "This organization is suspended.")
        if member.member_suspended:
            raise ProxyError.permission("suspended", "Your membership in this organization is suspended.")
        ctx.membership = member


def _choose(memberships: Sequence[Membership], bound: str | None, requested: str | None) -> Membership:
    by_org = {m.org_id: m for m in memberships}
    if bound is not None:
        if requested is not None and requested != bound:
            raise _not_a_member(requested)
        if bound not in by_org:  # the member was removed from the key's org
            raise _not_a_member(bound)
        return by_org[bound]
    if requested is not None:
        if requested not in by_org:
            raise _not_a_member(requested)
        return by_org[requested]
    default = next((m for m in memberships if m.is_default), None)
    if default is not None:
        return default
    if len(memberships) == 1:
        return memberships[0]
    if not memberships:
        raise ProxyError.permission("no_organization", "You do not belong to any organization.")
    raise ProxyError.permission(
        "no_organization",
        "You belong to several organizations and none is your default: "
        "send the OpenAI-Organization or X-Org-Id header.",
    )


def _not_a_member(org_id: str) -> ProxyError:
    return ProxyError.permission("not_a_member", f"You are not a member of organization '{org_id[:64]}'.")
