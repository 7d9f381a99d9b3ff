"""The caller's money routes on the real PgLedger and PgDirectory: credits, history, usage, request
records and BYOK usage after real holds and settlements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from proxy.caller.routes import caller_routes
from proxy.config.catalogue import Catalogue
from proxy.config.live import LiveConfig, Snapshot
from proxy.config.policy import PolicyConfig
from proxy.directory.crypto import KeyBox
from proxy.directory.pg import PgDirectory
from proxy.errors import ProxyError
from proxy.ledger.pg import PgLedger
from proxy.ledger.types import HoldRequest, Settlement

from .conftest import TOKENS, answer, error, render
from .fakes import FakeIdentify, FakeProbe

GRANT = 1_000_000


PRICE_VERSION = "pv_00000000000000aa"  # what the seeded holds were held at (the ledger records any version)


def hold(user: str, rid: str, amount: int, *, model: str = "fake-small", byok: bool = False) -> HoldRequest:
    rate = Decimal("0.05")
    return HoldRequest(org_id="org_a", user_id=user, key_id="key_test", request_id=rid, amount=amount, model=model,
                       byok=byok, prompt_tokens=12, input_rate=rate, output_rate=rate, list_input_rate=rate,
                       list_output_rate=rate, price_version=PRICE_VERSION)


def spent(charge: int, list_price: int, *, model: str = "fake-small", prompt: int = 10, completion: int = 5
          ) -> Settlement:
    return Settlement(prompt_tokens=prompt, completion_tokens=completion, charge=charge, list_price=list_price,
                      usage_source="provider", model=model, provider="openai", deployment=f"{model}-1")


@pytest.fixture
async def http(fresh_db: str, pool: asyncpg.Pool, catalogue: Catalogue, policy: PolicyConfig, keybox: KeyBox
               ) -> AsyncIterator[httpx.AsyncClient]:
    """org_a: alice (100,000 a month), bob (unlimited), root (admin); 1,000,000 granted; alice has
    one settled request, one settled BYOK request and one voided; bob one pending."""
    async with pool.acquire() as conn:
        members = [("usr_alice", 100_000, "month", "member"), ("usr_bob", None, "none", "member"),
                   ("usr_root", None, "none", "admin")]
        for user, limit, period, role in members:
            await conn.execute("INSERT INTO creditgate.users (id, email) VALUES ($1, $1 || '@example.com')", user)
            await conn.execute("""INSERT INTO creditgate.memberships (org_id, user_id, role, allocation_millicredits,
                                  allocation_period) VALUES ('org_a', $1, $2, $3, $4)""", user, role, limit, period)
    ledger = await PgLedger.connect(fresh_db, hold_ttl_seconds=120)
    await ledger.grant("org_a", GRANT, "welcome", "g1", None, "operator")
    await ledger.reserve(hold("usr_alice", "r-alice", 900))
    await ledger.settle("org_a", "r-alice", spent(700, 500))
    await ledger.reserve(hold("usr_alice", "r-byok", 0, model="byok-gpt", byok=True))
    await ledger.settle("org_a", "r-byok", spent(0, 42, model="byok-gpt", prompt=20, completion=8))
    await ledger.reserve(hold("usr_alice", "r-void", 400))
    await ledger.void("org_a", "r-void")
    await ledger.reserve(hold("usr_bob", "r-bob", 300))
    routes = caller_routes(identify=FakeIdentify(TOKENS), ledger=ledger, directory=PgDirectory(pool),
                           config=LiveConfig(Snapshot.of(policy, catalogue)), keybox=keybox, probe=FakeProbe(),
                           created=0)
    app = Starlette(routes=routes, exception_handlers={ProxyError: render})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        yield client
    await ledger.close()


async def get(http: httpx.AsyncClient, path: str, who: str = "alice") -> tuple[int, Any]:
    return answer(await http.get(path, headers={"Authorization": f"Bearer {who}"}))


def next_month(now: datetime) -> datetime:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)


async def test_credits_show_the_pool_and_the_callers_allocation(http: httpx.AsyncClient) -> None:
    status, body = await get(http, "/v1/credits")
    resets_at = datetime.fromisoformat(body["allocation"].pop("resets_at"))
    assert (status, body) == (200, {
        "org_id": "org_a", "pool": {"balance": GRANT - 700, "held": 300, "available": GRANT - 700 - 300},
        "allocation": {"limit": 100_000, "used": 700, "held": 0, "available": 100_000 - 700, "period": "month"},
        "key": None})  # FakeIdentify names no key: tests/e2e/test_scoped_keys.py shows a key's own
    assert resets_at == next_month(datetime.now(UTC))
    assert await get(http, "/api/v1/llm/credits", "bob") == (200, {
        "org_id": "org_a", "pool": {"balance": GRANT - 700, "held": 300, "available": GRANT - 700 - 300},
        "allocation": {"limit": None, "used": 0, "held": 300, "available": GRANT - 700 - 300, "period": "none",
                       "resets_at": None}, "key": None})


async def test_request_records_follow_visibility(http: httpx.AsyncClient) -> None:
    settled = {"request_id": "r-alice", "status": "settled", "model": "fake-small", "prompt_tokens": 10,
               "completion_tokens": 5, "held_millicredits": 900, "charged_millicredits": 700,
               "list_price_millicredits": 500, "usage_source": "provider", "byok": False,
               "price_version": PRICE_VERSION}
    assert await get(http, "/v1/requests/r-alice") == (200, settled)
    assert await get(http, "/v1/requests/r-alice", "root") == (200, settled)
    assert await get(http, "/v1/requests/r-alice", "bob") == error(
        404, "not_found_error", "request_not_found", "No request 'r-alice' found.")
    assert await get(http, "/v1/requests/r-alice", "carol") == error(
        404, "not_found_error", "request_not_found", "No request 'r-alice' found.")
    assert await get(http, "/v1/requests/r-bob", "bob") == (200, {
        "request_id": "r-bob", "status": "pending", "model": "fake-small", "prompt_tokens": 12,
        "completion_tokens": None, "held_millicredits": 300, "charged_millicredits": None,
        "list_price_millicredits": None, "usage_source": None, "byok": False, "price_version": PRICE_VERSION})
    status, voided = await get(http, "/v1/requests/r-void")
    assert (status, voided["status"], voided["charged_millicredits"]) == (200, "voided", None)
    status, byok = await get(http, "/api/v1/llm/requests/r-byok")
    assert (status, byok["byok"], byok["charged_millicredits"], byok["list_price_millicredits"]) == (200, True, 0, 42)


async def test_usage_is_the_callers_own(http: httpx.AsyncClient) -> None:
    assert await get(http, "/v1/usage?group_by=model") == (200, {"data": [
        {"model": "byok-gpt", "requests": 1, "prompt_tokens": 20, "completion_tokens": 8, "charged_millicredits": 0,
         "list_price_millicredits": 42},
        {"model": "fake-small", "requests": 1, "prompt_tokens": 10, "completion_tokens": 5,
         "charged_millicredits": 700, "list_price_millicredits": 500},
    ], "has_more": False})
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert await get(http, "/v1/usage?group_by=day") == (200, {"data": [
        {"day": today, "requests": 2, "prompt_tokens": 30, "completion_tokens": 13, "charged_millicredits": 700,
         "list_price_millicredits": 542}], "has_more": False})
    assert await get(http, "/v1/usage", "bob") == (200, {"data": [], "has_more": False})
    assert await get(http, "/v1/usage?end=2020-01-01T00:00:00Z") == (200, {"data": [], "has_more": False})


async def test_history_pages_newest_first_through_the_callers_entries(http: httpx.AsyncClient) -> None:
    seen: list[tuple[str, str | None, int, int]] = []
    after, pages = "", 0
    while True:
        status, page = await get(http, f"/v1/credits/history?limit=2{after}")
        assert status == 200
        pages += 1
        seen += [(row["kind"], row["request_id"], row["balance_delta"], row["held_delta"]) for row in page["data"]]
        assert all(row["user_id"] == "usr_alice" for row in page["data"])
        if not page["has_more"]:
            break
        after = f"&after={page['data'][-1]['id']}"
    assert seen == [("void", "r-void", 0, -400), ("hold", "r-void", 0, 400), ("post", "r-byok", 0, 0),
                    ("hold", "r-byok", 0, 0), ("post", "r-alice", -700, -900), ("hold", "r-alice", 0, 900)]
    assert pages == 3
    status, bob = await get(http, "/v1/credits/history", "bob")
    assert (status, [row["request_id"] for row in bob["data"]], bob["has_more"]) == (200, ["r-bob"], False)


async def test_byok_usage_for_the_member_and_for_the_org(http: httpx.AsyncClient) -> None:
    counts = {"requests": 1, "prompt_tokens": 20, "completion_tokens": 8, "list_price_millicredits": 42}
    assert await get(http, "/v1/byok/keys/openai/usage") == (200, {"provider": "openai", "scope": "user", **counts})
    assert await get(http, "/v1/byok/keys/openai/usage?scope=org", "root") == (
        200, {"provider": "openai", "scope": "org", **counts})
    assert await get(http, "/v1/byok/keys/openai/usage", "bob") == (200, {
        "provider": "openai", "scope": "user", "requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
        "list_price_millicredits": 0})
