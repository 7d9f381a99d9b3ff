"""The BYOK test call through the real LiteLLM in front of the fake provider (which refuses any
`sk-reject...` key with 401), and the classification of LiteLLM's answers."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from devstack import services
from proxy.caller.probe import ACCEPTED, PLATFORM, RATE_LIMITED, REJECTED, UNREACHABLE, classify, litellm_probe
from proxy.caller.routes import caller_routes
from proxy.config.catalogue import Catalogue
from proxy.config.live import LiveConfig, Snapshot
from proxy.config.policy import PolicyConfig
from proxy.config.settings import Secret
from proxy.directory.crypto import KeyBox
from proxy.directory.pg import PgDirectory
from proxy.errors import ProxyError
from tests.fakes import FakeLedger

from .conftest import TOKENS, answer, render
from .fakes import FakeIdentify


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def provider_saw(fake_provider: services.Service, key: str) -> list[dict[str, object]]:
    seen = httpx.get(f"{fake_provider.url}/_requests").json()
    return [r["body"] for r in seen if r["headers"].get("authorization") == f"Bearer {key}"]


async def test_a_valid_key_is_accepted_with_one_token_on_a_byok_deployment(
    session: aiohttp.ClientSession, litellm: services.Service, fake_provider: services.Service
) -> None:
    key = f"sk-probe-valid-{secrets.token_hex(6)}"
    probe = litellm_probe(session, litellm.url, Secret(services.MASTER_KEY))
    assert await probe("byok-gpt", Secret(key)) == (200, ACCEPTED)
    [body] = provider_saw(fake_provider, key)
    assert (body["model"], body["max_tokens"]) == ("byok-gpt", 1)


async def test_a_key_the_provider_refuses_is_reported_as_rejected(
    session: aiohttp.ClientSession, litellm: services.Service, fake_provider: services.Service
) -> None:
    key = f"sk-reject-probe-{secrets.token_hex(6)}"
    probe = litellm_probe(session, litellm.url, Secret(services.MASTER_KEY))
    assert await probe("byok-only", Secret(key)) == (401, REJECTED)
    assert len(provider_saw(fake_provider, key)) == 1


async def test_the_platforms_own_key_failing_is_not_the_members_fault(
    session: aiohttp.ClientSession, litellm: services.Service, fake_provider: services.Service
) -> None:
    key = f"sk-probe-valid-{secrets.token_hex(6)}"
    probe = litellm_probe(session, litellm.url, Secret("sk-wrong-master-key"))
    assert await probe("byok-gpt", Secret(key)) == (502, PLATFORM)
    assert provider_saw(fake_provider, key) == []


async def test_an_unreachable_model_service(session: aiohttp.ClientSession) -> None:
    probe = litellm_probe(session, f"http://127.0.0.1:{services.free_port()}", Secret("sk-any-master"))
    assert await probe("byok-gpt", Secret("sk-whatever-1234")) == (502, UNREACHABLE)


@pytest.mark.parametrize(("status", "raw", "expected"), [
    (200, b'{"choices": []}', (200, ACCEPTED)),
    (401, b'{"error": {"type": "authentication_error", "message": "Incorrect API key sk-...1234"}}', (401, REJECTED)),
    (401, b'{"error": {"type": "auth_error", "message": "Authentication Error, No api key passed in."}}',
     (502, PLATFORM)),
    (400, b'{"error": {"type": "no_db_connection", "message": "No connected db."}}', (502, PLATFORM)),
    (401, b"Internal Server Error", (502, PLATFORM)),
    (401, b'["not", "an", "object"]', (502, PLATFORM)),
    (429, b'{"error": {"type": "rate_limit_error"}}', (429, RATE_LIMITED)),
    (500, b"{}", (502, PLATFORM)),
])
def test_classification_of_litellm_answers(status: int, raw: bytes, expected: tuple[int, str]) -> None:
    assert classify(status, raw) == expected


async def test_the_test_route_through_the_real_litellm(
    session: aiohttp.ClientSession, litellm: services.Service, fake_provider: services.Service, pool: asyncpg.Pool,
    catalogue: Catalogue, policy: PolicyConfig, keybox: KeyBox,
) -> None:
    # the app hands over a getter: its aiohttp session only exists once the lifespan opened it
    probe = litellm_probe(lambda: session, litellm.url, Secret(services.MASTER_KEY))
    routes = caller_routes(identify=FakeIdentify(TOKENS), ledger=FakeLedger(), directory=PgDirectory(pool),
                           config=LiveConfig(Snapshot.of(policy, catalogue)), keybox=keybox, probe=probe, created=0)
    app = Starlette(routes=routes, exception_handlers={ProxyError: render})
    good, bad = f"sk-route-valid-{secrets.token_hex(6)}", f"sk-reject-route-{secrets.token_hex(6)}"
    auth = {"Authorization": "Bearer root"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        await http.post("/v1/byok/keys", headers=auth, json={"provider": "openai", "api_key": good})
        await http.post("/v1/byok/keys", headers=auth, json={"provider": "openai", "api_key": bad, "scope": "org"})
        mine = await http.post("/v1/byok/keys/openai/test", headers=auth)
        org = await http.post("/v1/byok/keys/openai/test?scope=org", headers=auth)
    assert answer(mine) == (200, {"ok": True, "status": 200, "message": ACCEPTED})
    assert answer(org) == (200, {"ok": False, "status": 401, "message": REJECTED})
    assert [b["model"] for b in provider_saw(fake_provider, good)] == ["byok-gpt"]
    assert [b["model"] for b in provider_saw(fake_provider, bad)] == ["byok-gpt"]
    assert good not in mine.text + org.text and bad not in mine.text + org.text
