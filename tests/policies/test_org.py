"""Authenticate and ResolveOrg against an in-memory directory: the contract's order and every 401/403."""

from __future__ import annotations

import pytest

from policies.auth import Authenticate
from policies.org import ResolveOrg
from proxy.directory.types import ApiKey
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext
from tests.fakes import DirectoryKeys
from tests.policies.policy_support import FakeDirectory, make_ctx, member


async def auth_error(directory: FakeDirectory, ctx: RequestContext) -> ProxyError:
    with pytest.raises(ProxyError) as info:
        await Authenticate(DirectoryKeys(directory))(ctx)
    return info.value


def authed(directory: FakeDirectory, *, bound: str | None = None, **headers: str) -> RequestContext:
    ctx = make_ctx(None, **headers)
    ctx.key = ApiKey("key_1", "usr_1", bound, False)
    return ctx


async def resolve(directory: FakeDirectory, ctx: RequestContext) -> str:
    await ResolveOrg(directory)(ctx)
    return ctx.require_membership().org_id


async def refused(directory: FakeDirectory, ctx: RequestContext) -> tuple[int, str | None]:
    with pytest.raises(ProxyError) as info:
        await ResolveOrg(directory)(ctx)
    return info.value.status, info.value.code


async def test_org_resolution_order(directory: FakeDirectory) -> None:
    directory.members["usr_1"] = [member("org_a"), member("org_b", is_default=True), member("org_c")]
    # the key's bound org beats the header and the default
    assert await resolve(directory, authed(directory, bound="org_c")) == "org_c"
    assert await resolve(directory, authed(directory, bound="org_c", openai_organization="org_c")) == "org_c"
    # then the header (OpenAI SDK's organization=, or X-Org-Id)
    assert await resolve(directory, authed(directory, openai_organization="org_a")) == "org_a"
    assert await resolve(directory, authed(directory, x_org_id="org_c")) == "org_c"
    assert (
        await resolve(directory, authed(directory, openai_organization="org_a", x_org_id="org_c")) == "org_a"
    )
    # then the member's default org
    assert await resolve(directory, authed(directory)) == "org_b"
    # then their only org
    directory.members["usr_1"] = [member("org_z")]
    assert await resolve(directory, authed(directory)) == "org_z"


async def test_org_refusals(directory: FakeDirectory) -> None:
    directory.members["usr_1"] = []
    assert await refused(directory, authed(directory)) == (403, "no_organization")
    directory.members["usr_1"] = [member("org_a"), member("org_b")]
    assert await refused(directory, authed(directory)) == (403, "no_organization")  # several, no default
    assert await refused(directory, authed(directory, x_org_id="org_unknown")) == (403, "not_a_member")
    assert await refused(directory, authed(directory, bound="org_a", x_org_id="org_b")) == (
        403,
        "not_a_member",
    )
    assert await refused(directory, authed(directory, bound="org_gone")) == (403, "not_a_member")


async def test_suspended_org_or_member(directory: FakeDirectory) -> None:
    directory.members["usr_1"] = [member("org_a", org_suspended=True), member("org_b", member_suspended=True)]
    assert await refused(directory, authed(directory, x_org_id="org_a")) == (403, "suspended")
    assert await refused(directory, authed(directory, x_org_id="org_b")) == (403, "suspended")


async def test_directory_failure_is_503_never_allowed(directory: FakeDirectory) -> None:
    directory.fail = ConnectionRefusedError("postgres down")
    assert await refused(directory, authed(directory)) == (503, "ledger_unavailable")
