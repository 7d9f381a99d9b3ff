"""The export's and budget alerts' admin routes through the real app on the real ledger
(tests/admin/world.py): an org's alerts for its admins and the operator, its thresholds changed and
audited, bad thresholds refused field by field, the operator's dead-letter view and retry."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from proxy.export.outbox import Failure, PgOutbox

from .world import TARGET_A, A, World, hold, spent


def error(response: httpx.Response) -> tuple[int, str, str | None]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["param"]


async def test_an_org_admin_reads_their_orgs_alerts(world: World) -> None:
    await world.call("admin_a", "PUT", f"/admin/orgs/{A}/members/{TARGET_A}", {"allocation_millicredits": 1_000})
    await world.ledger.reserve(hold(A, TARGET_A, "alert-1", 900))  # held counts: 90 % at once
    await world.ledger.settle(A, "alert-1", spent(820))
    answer = await world.call("admin_a", "GET", f"/admin/orgs/{A}/alerts")
    assert answer.status_code == 200
    rows = answer.json()["data"]
    assert [(r["scope"], r["user_id"], r["threshold"], r["used_millicredits"], r["budget_millicredits"])
            for r in rows] == [("allocation", TARGET_A, 80, 900, 1_000), ("allocation", TARGET_A, 50, 900, 1_000)]
    assert set(rows[0]) == {"id", "scope", "user_id", "threshold", "period_start", "used_millicredits",
                            "budget_millicredits", "fired_at"}
    assert rows[0]["period_start"] == "1970-01-01T00:00:00Z"
    assert (await world.call("operator", "GET", f"/admin/orgs/{A}/alerts")).json() == answer.json()
    assert error(await world.call("admin_b", "GET", f"/admin/orgs/{A}/alerts")) == (403, "not_a_member", None)
    assert error(await world.call("member_a", "GET", f"/admin/orgs/{A}/alerts")) == (403, "admin_required", None)
    paged = await world.call("admin_a", "GET", f"/admin/orgs/{A}/alerts?limit=1&after={rows[0]['id']}")
    assert paged.json() == {"data": [rows[1]], "has_more": False}


async def test_thresholds_change_only_what_is_sent_and_are_audited(world: World) -> None:
    path = f"/admin/orgs/{A}/alert-thresholds"
    assert (await world.call("admin_a", "GET", path)).json() == {"pool": [50, 80, 100], "allocation": [50, 80, 100]}
    changed = await world.call("admin_a", "PUT", path, {"allocation": [95, 60, 60]})
    assert (changed.status_code, changed.json()) == (200, {"pool": [50, 80, 100], "allocation": [60, 95]})
    off = await world.call("operator", "PUT", path, {"pool": []})
    assert off.json() == {"pool": [], "allocation": [60, 95]}
    assert (await world.call("operator", "GET", path)).json() == {"pool": [], "allocation": [60, 95]}
    audit = [(a["actor"], a["action"], a["org_id"]) for a in await world.audit()][-2:]
    assert audit == [("usr_admin_a", "org.alert_thresholds", A), ("operator", "org.alert_thresholds", A)]


@pytest.mark.parametrize(("body", "param"), [
    ({"pool": [0]}, "pool"), ({"pool": [101]}, "pool"), ({"allocation": [50.0]}, "allocation"),
    ({"pool": [True]}, "pool"), ({"pool": "50"}, "pool"), ({"pool": list(range(1, 12))}, "pool"),
    ({"pool": None}, "pool"), ({"pools": [50]}, "pools"), ({}, None),
])
async def test_bad_thresholds_are_refused_naming_the_field(world: World, body: dict[str, Any],
                                                           param: str | None) -> None:
    response = await world.call("admin_a", "PUT", f"/admin/orgs/{A}/alert-thresholds", body)
    assert error(response) == (400, "invalid_value", param)
    assert (await world.call("admin_a", "GET", f"/admin/orgs/{A}/alert-thresholds")).json()["pool"] == [50, 80, 100]


async def test_the_operator_lists_and_retries_dead_letters(world: World) -> None:
    outbox = PgOutbox(world.pool)
    await outbox.enable()
    await world.ledger.reserve(hold(A, TARGET_A, "dead-1", 900))
    await world.ledger.settle(A, "dead-1", spent(300))
    (event,) = await outbox.claim(10, 60.0)
    await outbox.failed([Failure(event.org_id, event.id, 0.0, 422, "HTTP 422", True)])
    listed = await world.call("operator", "GET", "/admin/export/dead-letters")
    (row,) = listed.json()["data"]
    assert {k: row[k] for k in ("id", "org_id", "code", "transaction_id", "attempts", "last_status", "last_error")} == {
        "id": str(event.id), "org_id": A, "code": "llm_usage", "transaction_id": "dead-1", "attempts": 1,
        "last_status": 422, "last_error": "HTTP 422"}
    assert row["properties"]["charged_millicredits"] == 300 and row["dead_at"] is not None
    assert error(await world.call("admin_a", "GET", "/admin/export/dead-letters")) == (403, "operator_only", None)
    path = f"/admin/export/dead-letters/{event.id}/retry"
    assert error(await world.call("admin_a", "POST", path)) == (403, "operator_only", None)
    retried = await world.call("operator", "POST", path)
    assert (retried.status_code, retried.json()["attempts"], retried.json()["dead_at"]) == (200, 0, None)
    assert error(await world.call("operator", "POST", path)) == (404, "dead_letter_not_found", None)
    assert error(await world.call("operator", "POST", "/admin/export/dead-letters/x1/retry")) == (
        400, "invalid_value", "event")
    assert (await world.call("operator", "GET", "/admin/export/dead-letters")).json() == {"data": [],
                                                                                          "has_more": False}
    assert [(a["actor"], a["action"], a["org_id"], a["target"]) for a in await world.audit()][-1] == (
        "operator", "export.retry", A, str(event.id))
    assert [e.transaction_id for e in await outbox.claim(10, 60.0)] == ["dead-1"]
