"""The admin routes over the real PgLedger: grants, adjustments, pool, usage and journal, exact values."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest

from proxy.directory.pg import PgDirectory
from proxy.ledger.pg import PgLedger
from proxy.ledger.types import PROVIDER, HoldRequest, Settlement

from .conftest import Admin, build_app


@pytest.fixture
async def ledger(fresh_db: str, directory: PgDirectory) -> AsyncIterator[PgLedger]:
    # `directory` first: its fixture migrates the database
    ledger = await PgLedger.connect(fresh_db, hold_ttl_seconds=120)
    yield ledger
    await ledger.close()


@pytest.fixture
async def real(directory: PgDirectory, ledger: PgLedger, admin: Admin) -> AsyncIterator[Admin]:
    revoked: list[str] = []
    app = build_app(directory, ledger, revoked)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as http:
        yield Admin(http, directory, ledger, admin.pool, revoked)


async def spend(ledger: PgLedger, org: str, user: str, request_id: str, model: str, charge: int) -> None:
    rate = Decimal("0.5")
    await ledger.reserve(HoldRequest(org, user, "key_x", request_id, charge, model, False, 10, rate, rate, rate, rate))
    await ledger.settle(org, request_id, Settlement(10, 4, charge, charge * 2, PROVIDER, model, "fake", None))


async def test_grant_replay_and_conflict(real: Admin) -> None:
    org = await real.org()
    body = {"amount_millicredits": 1_000_000, "reason": "welcome", "idempotency_key": "g-1"}
    first = await real.ok("POST", f"/admin/orgs/{org}/grants", body)
    assert (first["amount_millicredits"], first["kind"], first["actor"], first["replayed"]) == (
        1_000_000, "grant", "operator", False
    )
    assert (first["pool"]["balance"], first["pool"]["available"]) == (1_000_000, 1_000_000)
    again = await real.ok("POST", f"/admin/orgs/{org}/grants", body)
    assert (again["id"], again["replayed"], again["pool"]["balance"]) == (first["id"], True, 1_000_000)
    conflict = await real.call("POST", f"/admin/orgs/{org}/grants", {**body, "reason": "other"})
    assert (conflict.status_code, conflict.json()["error"]["code"]) == (409, "idempotency_key_reused")
    shown = await real.ok("GET", f"/admin/orgs/{org}")
    assert {k: shown["pool"][k] for k in ("balance", "held", "available", "overage", "granted")} == {
        "balance": 1_000_000, "held": 0, "available": 1_000_000, "overage": 0, "granted": 1_000_000,
    }


async def test_adjustments_move_the_balance_and_cannot_overdraw(real: Admin) -> None:
    org = await real.org()
    await real.ok("POST", f"/admin/orgs/{org}/grants", {"amount_millicredits": 500, "reason": "r",
                                                        "idempotency_key": "g"})
    debit = await real.ok("POST", f"/admin/orgs/{org}/adjustments",
                          {"amount_millicredits": -200, "reason": "correction", "idempotency_key": "a-1"})
    assert (debit["kind"], debit["amount_millicredits"], debit["pool"]["balance"]) == ("adjustment", -200, 300)
    too_much = await real.call("POST", f"/admin/orgs/{org}/adjustments",
                               {"amount_millicredits": -301, "reason": "x", "idempotency_key": "a-2"})
    assert too_much.status_code == 400
    assert too_much.json()["error"]["param"] == "amount_millicredits"
    assert (await real.ok("GET", f"/admin/orgs/{org}"))["pool"]["balance"] == 300


async def test_usage_by_user_model_and_day_survives_removing_the_member(real: Admin, ledger: PgLedger) -> None:
    org = await real.org()
    ann, bob = await real.user("ann@acme.test"), await real.user("bob@acme.test")
    for user in (ann, bob):
        await real.member(org, user)
    await real.ok("POST", f"/admin/orgs/{org}/grants", {"amount_millicredits": 10_000, "reason": "r",
                                                        "idempotency_key": "g"})
    await spend(ledger, org, ann, "r1", "fake-small", 100)
    await spend(ledger, org, ann, "r2", "fake-large", 250)
    await spend(ledger, org, bob, "r3", "fake-small", 40)
    await real.ok("DELETE", f"/admin/orgs/{org}/members/{bob}")
    by_user = await real.ok("GET", f"/admin/orgs/{org}/usage", group_by="user")
    assert by_user == {"data": sorted([
        {"user": ann, "requests": 2, "prompt_tokens": 20, "completion_tokens": 8, "charged_millicredits": 350,
         "list_price_millicredits": 700},
        {"user": bob, "requests": 1, "prompt_tokens": 10, "completion_tokens": 4, "charged_millicredits": 40,
         "list_price_millicredits": 80},
    ], key=lambda r: str(r["user"])), "has_more": False}
    by_model = await real.ok("GET", f"/admin/orgs/{org}/usage", group_by="model", user_id=ann)
    assert [(r["model"], r["charged_millicredits"]) for r in by_model["data"]] == [("fake-large", 250),
                                                                                     ("fake-small", 100)]
    by_day = await real.ok("GET", f"/admin/orgs/{org}/usage", group_by="day")
    assert [(r["requests"], r["charged_millicredits"]) for r in by_day["data"]] == [(3, 390)]
    window = await real.ok("GET", f"/admin/orgs/{org}/usage", start="2000-01-01T00:00:00Z",
                           end="2000-01-02T00:00:00Z")
    assert window == {"data": [], "has_more": False}
    assert (await real.ok("GET", f"/admin/orgs/{org}"))["pool"]["balance"] == 10_000 - 390


async def test_ledger_pages_through_the_journal(real: Admin) -> None:
    org = await real.org()
    for i in range(7):
        await real.ok("POST", f"/admin/orgs/{org}/grants", {"amount_millicredits": 100 + i, "reason": f"g{i}",
                                                            "idempotency_key": f"k{i}"})
    seen: list[int] = []
    after: str | None = None
    pages = 0
    while True:
        params = {"limit": "3"} | ({"after": after} if after else {})
        page = await real.ok("GET", f"/admin/orgs/{org}/ledger", **params)
        seen += [e["amount_millicredits"] for e in page["data"]]
        pages += 1
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == [106, 105, 104, 103, 102, 101, 100]
    assert pages == 3
