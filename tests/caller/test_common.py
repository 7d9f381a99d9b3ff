"""`identify_with` over the real Authenticate and ResolveOrg on the real PgDirectory: the caller
routes act for the API key's user in the org the contract's order picks, and refuse otherwise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from policies.auth import Authenticate
from policies.org import ResolveOrg
from proxy.caller.common import identify_with
from proxy.caller.routes import caller_routes
from proxy.config.catalogue import Catalogue
from proxy.config.live import LiveConfig, Snapshot
from proxy.config.policy import PolicyConfig
from proxy.directory.crypto import KeyBox
from proxy.directory.pg import PgDirectory
from proxy.errors import ProxyError
from proxy.ledger.pg import PgLedger
from tests.fakes import DirectoryKeys

from .conftest import answer, error, render
from .fakes import FakeProbe


@dataclass
class World:
    http: httpx.AsyncClient
    directory: PgDirectory
    user: str
    key: str
    bound_key: str


@pytest.fixture
async def world(fresh_db: str, pool: asyncpg.Pool, catalogue: Catalogue, policy: PolicyConfig, keybox: KeyBox
                ) -> AsyncIterator[World]:
    """A user in org_a (default, member) and org_b (admin), with an unbound key and one bound to org_b."""
    directory = PgDirectory(pool)
    user = (await directory.create_user("dana@example.com", "Dana", "operator"))["id"]
    await directory.put_member("org_a", user, {"role": "member", "default": True}, "operator")
    await directory.put_member("org_b", user, {"role": "admin"}, "operator")
    key = (await directory.create_key(user, None, "laptop", "operator"))["key"]
    bound = (await directory.create_key(user, "org_b", "ci", "operator"))["key"]
    ledger = await PgLedger.connect(fresh_db, hold_ttl_seconds=120)
    identify = identify_with((Authenticate(DirectoryKeys(directory)), ResolveOrg(directory)))
    routes = caller_routes(identify=identify, ledger=ledger, directory=directory,
                           config=LiveConfig(Snapshot.of(policy, catalogue)), keybox=keybox, probe=FakeProbe(),
                           created=0)
    app = Starlette(routes=routes, exception_handlers={ProxyError: render})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        yield World(http, directory, user, key, bound)
    await ledger.close()


async def org_of(world: World, key: str, **headers: str) -> tuple[int, object]:
    response = await world.http.get("/v1/credits", headers={"Authorization": f"Bearer {key}", **headers})
    status, body = answer(response)
    return status, body["org_id"] if status == 200 else body


async def test_the_default_org_then_the_requested_one(world: World) -> None:
    assert await org_of(world, world.key) == (200, "org_a")
    assert await org_of(world, world.key, **{"OpenAI-Organization": "org_b"}) == (200, "org_b")
    assert await org_of(world, world.key, **{"X-Org-Id": "org_b"}) == (200, "org_b")
    assert await org_of(world, world.bound_key) == (200, "org_b")


async def test_refusals_come_from_the_chain(world: World) -> None:
    assert await org_of(world, world.key, **{"OpenAI-Organization": "org_f"}) == error(
        403, "permission_error", "not_a_member", "You are not a member of organization 'org_f'.")
    # a key bound to org_b cannot be pointed at another org
    assert await org_of(world, world.bound_key, **{"X-Org-Id": "org_a"}) == error(
        403, "permission_error", "not_a_member", "You are not a member of organization 'org_a'.")
    assert await org_of(world, "sk-cg-unknown") == error(401, "authentication_error", "invalid_api_key",
                                                         "Invalid API key.")
    response = await world.http.get("/v1/models")
    assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_api_key")


async def test_the_role_comes_from_the_resolved_membership(world: World) -> None:
    store = {"provider": "openai", "api_key": "sk-dana-org-key-0042", "scope": "org"}
    headers = {"Authorization": f"Bearer {world.key}"}
    refused = await world.http.post("/v1/byok/keys", headers=headers, json=store)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "not_an_org_admin")
    allowed = await world.http.post("/v1/byok/keys", headers={**headers, "OpenAI-Organization": "org_b"}, json=store)
    assert (allowed.status_code, allowed.json()["scope"], allowed.json()["masked_key"]) == (201, "org", "****0042")
    assert [(r["provider"], r["scope"]) for r in await world.directory.list_provider_keys("org_b", world.user)] == [
        ("openai", "org")]
