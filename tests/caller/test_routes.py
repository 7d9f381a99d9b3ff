"""The caller routes mounted in the real composition root (`create_app(routes=...)`): they take the
place of LiteLLM's model list, answers carry X-Request-Id, wrong methods and unknown paths are the
contract's 404."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from devstack import services
from proxy.app import create_app
from proxy.caller.routes import caller_routes
from proxy.config.catalogue import Catalogue
from proxy.config.live import LiveConfig, Snapshot
from proxy.config.policy import PolicyConfig
from proxy.config.settings import Secret, Settings
from proxy.directory.crypto import KeyBox
from proxy.directory.pg import PgDirectory
from tests.fakes import FakeLedger

from .conftest import ROOT, TOKENS, answer, error
from .fakes import FakeIdentify, FakeProbe


@pytest.fixture
async def http(pool: asyncpg.Pool, catalogue: Catalogue, policy: PolicyConfig, keybox: KeyBox
               ) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        database_url=Secret("postgresql://unused@127.0.0.1:1/unused"), redis_url=Secret("redis://127.0.0.1:1/0"),
        # nothing listens here: a request that reached LiteLLM's own /models would fail
        upstream_url=f"http://127.0.0.1:{services.free_port()}", upstream_key=Secret("sk-upstream-unused"),
        admin_token=Secret("admin-token-for-caller-tests"), byok_keys=(), litellm_config=ROOT / "litellm_config.yaml",
        policy_config=ROOT / "policy.yaml",
    )
    routes = caller_routes(identify=FakeIdentify(TOKENS), ledger=FakeLedger(), directory=PgDirectory(pool),
                           config=LiveConfig(Snapshot.of(policy, catalogue)), keybox=keybox, probe=FakeProbe(),
                           created=7)
    app = create_app(settings, policies=(), routes=routes)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        yield client


async def test_answers_carry_the_request_id(http: httpx.AsyncClient) -> None:
    ok = await http.get("/v1/credits", headers={"Authorization": "Bearer alice", "X-Request-Id": "trace-1"})
    assert (ok.status_code, ok.headers["x-request-id"], ok.json()["org_id"]) == (200, "trace-1", "org_a")
    refused = await http.post("/api/v1/llm/credits/purchase", headers={"Authorization": "Bearer alice"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (410, "purchases_disabled")
    assert refused.headers["x-request-id"].startswith("req_")


async def test_the_callers_model_list_replaces_litellms(http: httpx.AsyncClient) -> None:
    for path in ("/v1/models", "/api/v1/llm/models/categorized", "/v1/models/fake-small"):
        response = await http.get(path, headers={"Authorization": "Bearer frank"})
        assert response.status_code == 200, path
    one = await http.get("/v1/models/fake-small", headers={"Authorization": "Bearer frank"})
    assert one.json() == {"id": "fake-small", "object": "model", "created": 7, "owned_by": "openai",
                          "power_levels": ["eco"]}


@pytest.mark.parametrize(("method", "path"), [
    ("PUT", "/v1/credits"), ("DELETE", "/v1/credits/history"), ("GET", "/v1/credits/purchase"),
    ("PATCH", "/v1/byok/keys"), ("GET", "/v1/byok/keys/openai"), ("GET", "/v1/byok/keys/openai/toggle"),
    ("GET", "/v1/byok/things"), ("POST", "/v1/usage"),
])
async def test_wrong_methods_and_unknown_paths_are_route_not_found(http: httpx.AsyncClient, method: str,
                                                                    path: str) -> None:
    response = await http.request(method, path, headers={"Authorization": "Bearer alice"})
    assert answer(response) == error(404, "not_found_error", "route_not_found", "Unknown route.")
