"""Org routes: create, list, show, change, grants, adjustments, usage and ledger (fake ledger)."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.fakes import FakeLedger

from .conftest import Admin


async def test_create_and_show_an_org_with_its_pool_and_members(admin: Admin) -> None:
    created = await admin.call("POST", "/admin/orgs", {"name": "  Acme  ", "tier": "starter"})
    assert created.status_code == 201
    org = created.json()
    assert org["id"].startswith("org_") and len(org["id"]) == 30
    assert (org["name"], org["tier"], org["suspended"]) == ("Acme", "starter", False)
    assert org["created_at"].endswith("Z")
    user = await admin.user("ann@acme.test")
    await admin.member(org["id"], user, role="admin", allocation_millicredits=5000, allocation_period="month")
    shown = await admin.ok("GET", f"/admin/orgs/{org['id']}")
    assert shown["pool"] == {"balance": 0, "held": 0, "available": 0, "overage": 0, "granted": 0}
    [member] = shown["members"]
    assert {k: member[k] for k in ("user_id", "email", "role", "allocation_millicredits", "allocation_period")} == {
        "user_id": user, "email": "ann@acme.test", "role": "admin", "allocation_millicredits": 5000,
        "allocation_period": "month",
    }
    assert (member["default"], member["power_level"], member["suspended"]) == (False, None, False)


async def test_list_orgs(admin: Admin) -> None:
    ids = [await admin.org(f"Org {i}") for i in range(3)]
    listed = await admin.ok("GET", "/admin/orgs")
    assert [o["id"] for o in listed["data"]] == sorted(ids)
    assert listed["has_more"] is False


async def test_patch_changes_tier_and_suspension_and_keeps_the_rest(admin: Admin) -> None:
    org = await admin.org()
    assert (await admin.ok("PATCH", f"/admin/orgs/{org}", {"tier": "enterprise"}))["tier"] == "enterprise"
    patched = await admin.ok("PATCH", f"/admin/orgs/{org}", {"suspended": True})
    assert (patched["tier"], patched["suspended"]) == ("enterprise", True)
    both = await admin.ok("PATCH", f"/admin/orgs/{org}", {"tier": "free", "suspended": False})
    assert (both["tier"], both["suspended"], both["name"]) == ("free", False, "Acme")


async def test_unknown_org_is_404_on_every_org_route(admin: Admin) -> None:
    org = "org_doesnotexist"
    for method, path, body in [
        ("GET", f"/admin/orgs/{org}", None),
        ("PATCH", f"/admin/orgs/{org}", {"tier": "free"}),
        ("POST", f"/admin/orgs/{org}/grants", {"amount_millicredits": 5, "reason": "r", "idempotency_key": "k"}),
        ("POST", f"/admin/orgs/{org}/adjustments", {"amount_millicredits": 5, "reason": "r", "idempotency_key": "k"}),
        ("GET", f"/admin/orgs/{org}/usage", None),
        ("GET", f"/admin/orgs/{org}/ledger", None),
    ]:
        response = await admin.call(method, path, body)
        assert response.status_code == 404, (method, path)
        assert response.json() == {"error": {"message": "Unknown organization.", "type": "not_found_error",
                                             "param": None, "code": "org_not_found"}}


async def test_grant_passes_exact_fields_to_the_ledger_and_is_idempotent(admin: Admin, fake_ledger: FakeLedger) -> None:
    org = await admin.org()
    body = {"amount_millicredits": 1_000_000, "reason": "welcome", "idempotency_key": "g-1",
            "expires_at": "2999-01-01T00:00:00Z"}
    first = await admin.ok("POST", f"/admin/orgs/{org}/grants", body)
    assert first["pool"]["balance"] == 1_000_000
    assert fake_ledger.calls[0] == (
        "grant", (org, 1_000_000, "welcome", "g-1", datetime(2999, 1, 1, tzinfo=UTC), "operator")
    )
    again = await admin.ok("POST", f"/admin/orgs/{org}/grants", body)
    assert again["grant"] == first["grant"]
    conflict = await admin.call("POST", f"/admin/orgs/{org}/grants", {**body, "amount_millicredits": 2})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["type"] == "conflict_error"


async def test_adjustments_are_signed(admin: Admin, fake_ledger: FakeLedger) -> None:
    org = await admin.org()
    grant = {"amount_millicredits": 500, "reason": "r", "idempotency_key": "g"}
    await admin.ok("POST", f"/admin/orgs/{org}/grants", grant)
    refund = {"amount_millicredits": 250, "reason": "refund req_1", "idempotency_key": "a-1"}
    assert (await admin.ok("POST", f"/admin/orgs/{org}/adjustments", refund))["pool"]["balance"] == 750
    debit = {"amount_millicredits": -700, "reason": "correction", "idempotency_key": "a-2"}
    assert (await admin.ok("POST", f"/admin/orgs/{org}/adjustments", debit))["pool"]["balance"] == 50
    assert fake_ledger.last() == ("adjust", (org, -700, "correction", "a-2", "operator"))


async def test_usage_passes_group_user_and_window(admin: Admin, fake_ledger: FakeLedger) -> None:
    org = await admin.org()
    user = await admin.user("u@acme.test")
    answer = await admin.ok("GET", f"/admin/orgs/{org}/usage", group_by="user", user_id=user,
                            start="2026-11-01T00:00:00Z", end="2026-12-01T00:00:00+00:00")
    assert answer == {"data": [{"user": "x", "requests": 2, "prompt_tokens": 10, "completion_tokens": 5,
                                "charged_millicredits": 42, "list_price_millicredits": 70}], "has_more": False}
    assert fake_ledger.last() == ("usage", (
        org, "user", user, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC), None, None, 1000))
    await admin.ok("GET", f"/admin/orgs/{org}/usage")
    assert fake_ledger.last() == ("usage", (org, "model", None, None, None, None, None, 1000))
    await admin.ok("GET", f"/admin/orgs/{org}/usage", group_by="tag", end_user="customer 42", tag="team-a")
    assert fake_ledger.last() == ("usage", (org, "tag", None, None, None, "customer 42", "team-a", 1000))
    await admin.ok("GET", f"/admin/orgs/{org}/usage", group_by="day")
    assert fake_ledger.last()[1][1] == "day"


async def test_ledger_pages_newest_first(admin: Admin, fake_ledger: FakeLedger) -> None:
    org = await admin.org()
    for i in range(5):
        body = {"amount_millicredits": 10 + i, "reason": f"r{i}", "idempotency_key": f"k{i}"}
        await admin.ok("POST", f"/admin/orgs/{org}/grants", body)
    first = await admin.ok("GET", f"/admin/orgs/{org}/ledger", limit=3)
    assert [e["amount_millicredits"] for e in first["data"]] == [14, 13, 12]
    assert first["has_more"] is True
    rest = await admin.ok("GET", f"/admin/orgs/{org}/ledger", limit=3, after=first["data"][-1]["id"])
    assert [e["amount_millicredits"] for e in rest["data"]] == [11, 10]
    assert rest["has_more"] is False
    assert fake_ledger.last() == ("entries", (org, None, 3, first["data"][-1]["id"]))
