"""Who may do what, cell by cell (issue 7, item 4; CONTRACT.md "Operator's admin API"): a member of A,
the admin of A, the admin of B, the operator, a stranger's key and no credentials, against every
admin route, every caller route and every money path, through the real app on the real PostgreSQL.

Each cell asserts the exact status and error code. A refused cell changes no row anywhere. An allowed
change writes audit rows naming its actor (org admins' rows in their own org only), and an org admin's
allowed change leaves every row outside their org as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from devstack import services

from .conftest import lanes_copy
from .world import (
    ACTORS,
    CALLERS,
    KEY_IDS,
    LONER,
    MEMBER_A,
    PRICES,
    TARGET_A,
    TARGET_B,
    A,
    B,
    World,
    open_world,
    snapshot,
)

Expect = tuple[int, str | None]
UNAUTHENTICATED: Expect = (401, "invalid_api_key")
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
         410: "gone"}
ORG_OF = {"admin_a": A, "admin_b": B}


@dataclass(frozen=True)
class Row:
    name: str
    method: str
    path: str
    expect: dict[str, Expect]
    body: Any = None
    extra: dict[str, str] = field(default_factory=dict)
    audits: tuple[str, ...] = ()  # the audit actions of an allowed change, in order
    changes: bool = False  # an allowed call changes rows (audits imply it)

    @property
    def mutates(self) -> bool:
        return self.changes or bool(self.audits)


def operator_only(ok: int) -> dict[str, Expect]:
    refused: Expect = (403, "operator_only")
    return {"member_a": refused, "admin_a": refused, "admin_b": refused, "operator": (ok, None)}


def admin_of_a(ok: int, operator: Expect | None = None) -> dict[str, Expect]:
    return {"member_a": (403, "admin_required"), "admin_a": (ok, None), "admin_b": (403, "not_a_member"),
            "operator": operator or (ok, None)}


def admin_of_b(ok: int) -> dict[str, Expect]:
    return {"member_a": (403, "not_a_member"), "admin_a": (403, "not_a_member"), "admin_b": (ok, None),
            "operator": (ok, None)}


def members(member_a: Expect, admin_a: Expect, admin_b: Expect) -> dict[str, Expect]:
    """A caller route: the operator's token is not an API key there."""
    return {"member_a": member_a, "admin_a": admin_a, "admin_b": admin_b, "operator": UNAUTHENTICATED}


OK: Expect = (200, None)
CREATED: Expect = (201, None)
NOT_A_MEMBER: Expect = (403, "not_a_member")
ADMIN_REQUIRED: Expect = (403, "admin_required")
MEMBER_NOT_FOUND: Expect = (404, "member_not_found")
NOT_AN_ORG_ADMIN: Expect = (403, "not_an_org_admin")
BYOK_NOT_FOUND: Expect = (404, "byok_key_not_found")
REQUEST_NOT_FOUND: Expect = (404, "request_not_found")
GRANT = {"amount_millicredits": 5_000, "reason": "matrix", "idempotency_key": "matrix-1"}
CSV_WINDOW = "start=2026-01-01T00:00:00Z&end=2026-03-01T00:00:00Z"

ADMIN_ROWS = [
    Row("create org", "POST", "/admin/orgs", operator_only(201), {"name": "New", "tier": "free"},
        audits=("org.create",)),
    Row("list orgs", "GET", "/admin/orgs", operator_only(200)),
    Row("show A", "GET", f"/admin/orgs/{A}", admin_of_a(200)),
    Row("show B", "GET", f"/admin/orgs/{B}", admin_of_b(200)),
    Row("show unknown org", "GET", "/admin/orgs/org_missing",
        {"member_a": NOT_A_MEMBER, "admin_a": NOT_A_MEMBER, "admin_b": NOT_A_MEMBER,
         "operator": (404, "org_not_found")}),
    Row("change A's tier", "PATCH", f"/admin/orgs/{A}", operator_only(200), {"tier": "enterprise"},
        audits=("org.update",)),
    Row("suspend A", "PATCH", f"/admin/orgs/{A}", operator_only(200), {"suspended": True}, audits=("org.update",)),
    Row("grant A", "POST", f"/admin/orgs/{A}/grants", operator_only(200), GRANT, audits=("org.grant",)),
    Row("grant B", "POST", f"/admin/orgs/{B}/grants", operator_only(200), GRANT, audits=("org.grant",)),
    Row("adjust A", "POST", f"/admin/orgs/{A}/adjustments", operator_only(200),
        {**GRANT, "amount_millicredits": -100}, audits=("org.adjust",)),
    Row("usage A", "GET", f"/admin/orgs/{A}/usage?group_by=user", admin_of_a(200)),
    Row("usage B", "GET", f"/admin/orgs/{B}/usage", admin_of_b(200)),
    Row("ledger A", "GET", f"/admin/orgs/{A}/ledger", admin_of_a(200)),
    Row("ledger B", "GET", f"/admin/orgs/{B}/ledger", admin_of_b(200)),
    Row("audit A", "GET", f"/admin/orgs/{A}/audit", admin_of_a(200)),
    Row("audit B", "GET", f"/admin/orgs/{B}/audit", admin_of_b(200)),
    Row("audit of all", "GET", "/admin/audit", operator_only(200)),
    Row("usage A by price version", "GET", f"/admin/orgs/{A}/usage?group_by=price_version", admin_of_a(200)),
    Row("usage A by tag", "GET", f"/admin/orgs/{A}/usage?group_by=tag&end_user=c1", admin_of_a(200)),
    Row("usage A as CSV", "GET", f"/admin/orgs/{A}/usage.csv?{CSV_WINDOW}", admin_of_a(200)),
    Row("usage B as CSV", "GET", f"/admin/orgs/{B}/usage.csv?{CSV_WINDOW}&tag=t", admin_of_b(200)),
    Row("price versions", "GET", "/admin/price-versions", operator_only(200)),
    Row("one price version", "GET", f"/admin/price-versions/{PRICES.version}", operator_only(200)),
    Row("an unknown price version", "GET", "/admin/price-versions/pv_0000000000000000",
        operator_only(404) | {"operator": (404, "price_version_not_found")}),
    Row("read a member of A", "GET", f"/admin/orgs/{A}/members/{TARGET_A}", admin_of_a(200)),
    Row("read a member of B", "GET", f"/admin/orgs/{B}/members/{TARGET_B}", admin_of_b(200)),
    Row("read B's member through A", "GET", f"/admin/orgs/{A}/members/{TARGET_B}", admin_of_a(404) | {
        "admin_a": MEMBER_NOT_FOUND, "operator": MEMBER_NOT_FOUND}),
    Row("read an unknown user in A", "GET", f"/admin/orgs/{A}/members/usr_missing", admin_of_a(404) | {
        "admin_a": MEMBER_NOT_FOUND, "operator": MEMBER_NOT_FOUND}),
    Row("read a member of an unknown org", "GET", f"/admin/orgs/org_missing/members/{TARGET_A}",
        {"member_a": NOT_A_MEMBER, "admin_a": NOT_A_MEMBER, "admin_b": NOT_A_MEMBER,
         "operator": (404, "org_not_found")}),
    Row("change a member of A", "PUT", f"/admin/orgs/{A}/members/{TARGET_A}", admin_of_a(200),
        {"allocation_millicredits": 5_000, "power_level": "eco"}, audits=("member.put",)),
    Row("suspend a member of A", "PUT", f"/admin/orgs/{A}/members/{TARGET_A}", admin_of_a(200),
        {"suspended": True}, audits=("member.put",)),
    Row("promote a member of A", "PUT", f"/admin/orgs/{A}/members/{MEMBER_A}", admin_of_a(200),
        {"role": "admin"}, audits=("member.put",)),
    Row("default org of a member of A", "PUT", f"/admin/orgs/{A}/members/{MEMBER_A}",
        {**admin_of_a(200), "admin_a": (403, "operator_only")}, {"default": True}, audits=("member.put",)),
    Row("add B's member to A", "PUT", f"/admin/orgs/{A}/members/{TARGET_B}",
        {**admin_of_a(200), "admin_a": MEMBER_NOT_FOUND}, {"allocation_millicredits": 1},
        audits=("member.put",)),
    Row("add a user of no org to A", "PUT", f"/admin/orgs/{A}/members/{LONER}",
        {**admin_of_a(200), "admin_a": MEMBER_NOT_FOUND}, {"allocation_millicredits": 1},
        audits=("member.put",)),
    Row("add an unknown user to A", "PUT", f"/admin/orgs/{A}/members/usr_missing",
        admin_of_a(404, (404, "user_not_found")) | {"admin_a": MEMBER_NOT_FOUND}, {"allocation_millicredits": 1}),
    Row("suspend a member of B", "PUT", f"/admin/orgs/{B}/members/{TARGET_B}", admin_of_b(200),
        {"suspended": True}, audits=("member.put",)),
    Row("remove a member of A", "DELETE", f"/admin/orgs/{A}/members/{TARGET_A}", admin_of_a(200),
        audits=("member.delete",)),
    Row("remove B's member from A", "DELETE", f"/admin/orgs/{A}/members/{TARGET_B}", admin_of_a(404) | {
        "admin_a": MEMBER_NOT_FOUND, "operator": MEMBER_NOT_FOUND}),
    Row("create user", "POST", "/admin/users", operator_only(201), {"email": "new@lanes.test"},
        audits=("user.create",)),
    Row("list users", "GET", "/admin/users", operator_only(200)),
    Row("key for a member of A", "POST", "/admin/keys", {**admin_of_a(201), "admin_b": MEMBER_NOT_FOUND},
        {"user_id": TARGET_A, "name": "m"}, audits=("key.create",)),
    Row("key for a member of B in B", "POST", "/admin/keys",
        {"member_a": ADMIN_REQUIRED, "admin_a": NOT_A_MEMBER, "admin_b": CREATED, "operator": CREATED},
        {"user_id": TARGET_B, "org_id": B}, audits=("key.create",)),
    Row("key for B's member in A", "POST", "/admin/keys",
        {"member_a": ADMIN_REQUIRED, "admin_a": MEMBER_NOT_FOUND, "admin_b": NOT_A_MEMBER,
         "operator": NOT_A_MEMBER}, {"user_id": TARGET_B, "org_id": A}),
    Row("key for a user of no org", "POST", "/admin/keys",
        {"member_a": ADMIN_REQUIRED, "admin_a": MEMBER_NOT_FOUND, "admin_b": MEMBER_NOT_FOUND,
         "operator": CREATED}, {"user_id": LONER}, audits=("key.create",)),
    Row("key for an unknown user", "POST", "/admin/keys",
        {"member_a": ADMIN_REQUIRED, "admin_a": MEMBER_NOT_FOUND, "admin_b": MEMBER_NOT_FOUND,
         "operator": (404, "user_not_found")}, {"user_id": "usr_missing"}),
    Row("list keys", "GET", "/admin/keys", {**admin_of_a(200), "admin_b": OK}),
    Row("list B's keys", "GET", f"/admin/keys?org_id={B}", admin_of_b(200)),
    Row("scope a key of A", "PATCH", f"/admin/keys/{KEY_IDS['target_a']}", admin_of_a(200),
        {"models": ["fake-small"], "limit_millicredits": 500}, audits=("key.update",)),
    Row("scope a key of B", "PATCH", f"/admin/keys/{KEY_IDS['target_b']}",
        {"member_a": ADMIN_REQUIRED, "admin_a": NOT_A_MEMBER, "admin_b": OK, "operator": OK}, {"read_only": True},
        audits=("key.update",)),
    Row("scope an unknown key", "PATCH", "/admin/keys/key_missing",
        {"member_a": ADMIN_REQUIRED, "admin_a": NOT_A_MEMBER, "admin_b": NOT_A_MEMBER,
         "operator": (404, "key_not_found")}, {"read_only": True}),
    Row("a scoped key for a member of A", "POST", "/admin/keys", {**admin_of_a(201), "admin_b": NOT_A_MEMBER},
        {"user_id": TARGET_A, "org_id": A, "routes": ["/v1/credits"], "read_only": True,
         "limit_millicredits": 100, "limit_period": "day"}, audits=("key.create",)),
    Row("revoke a key of A", "DELETE", f"/admin/keys/{KEY_IDS['target_a']}", admin_of_a(200),
        audits=("key.revoke",)),
    Row("revoke a key of B", "DELETE", f"/admin/keys/{KEY_IDS['target_b']}",
        {"member_a": ADMIN_REQUIRED, "admin_a": NOT_A_MEMBER, "admin_b": OK, "operator": OK}, audits=("key.revoke",)),
    Row("revoke an unknown key", "DELETE", "/admin/keys/key_missing",
        {"member_a": ADMIN_REQUIRED, "admin_a": NOT_A_MEMBER, "admin_b": NOT_A_MEMBER,
         "operator": (404, "key_not_found")}),
    Row("alerts of A", "GET", f"/admin/orgs/{A}/alerts", admin_of_a(200)),
    Row("alerts of B", "GET", f"/admin/orgs/{B}/alerts", admin_of_b(200)),
    Row("alerts of an unknown org", "GET", "/admin/orgs/org_missing/alerts",
        {"member_a": NOT_A_MEMBER, "admin_a": NOT_A_MEMBER, "admin_b": NOT_A_MEMBER,
         "operator": (404, "org_not_found")}),
    Row("alert thresholds of A", "GET", f"/admin/orgs/{A}/alert-thresholds", admin_of_a(200)),
    Row("change A's alert thresholds", "PUT", f"/admin/orgs/{A}/alert-thresholds", admin_of_a(200),
        {"pool": [75]}, audits=("org.alert_thresholds",)),
    Row("change B's alert thresholds", "PUT", f"/admin/orgs/{B}/alert-thresholds", admin_of_b(200),
        {"allocation": [90]}, audits=("org.alert_thresholds",)),
    Row("export dead letters", "GET", "/admin/export/dead-letters", operator_only(200)),
    Row("retry an unknown dead letter", "POST", "/admin/export/dead-letters/123/retry",
        operator_only(404) | {"operator": (404, "dead_letter_not_found")}),
]

ORG_SCOPE = "?scope=org"
CALLER_ROWS = [
    Row("credits", "GET", "/v1/credits", members(OK, OK, OK)),
    Row("credits (other prefix)", "GET", "/api/v1/llm/credits", members(OK, OK, OK)),
    Row("credits of B by header", "GET", "/v1/credits", members(NOT_A_MEMBER, NOT_A_MEMBER, OK), extra={"x-org-id": B}),
    Row("credit history", "GET", "/v1/credits/history", members(OK, OK, OK)),
    Row("usage", "GET", "/v1/usage?group_by=day", members(OK, OK, OK)),
    Row("usage by end user", "GET", "/v1/usage?group_by=end_user&tag=t", members(OK, OK, OK)),
    Row("usage as CSV", "GET", f"/v1/usage.csv?{CSV_WINDOW}", members(OK, OK, OK)),
    Row("A's request", "GET", "/v1/requests/req-a1", members(OK, OK, REQUEST_NOT_FOUND)),
    Row("B's request", "GET", "/v1/requests/req-b1", members(REQUEST_NOT_FOUND, REQUEST_NOT_FOUND, OK)),
    Row("purchase", "POST", "/v1/credits/purchase", members(*[(410, "purchases_disabled")] * 3), {"amount": 5}),
    Row("models", "GET", "/v1/models", members(OK, OK, OK)),
    Row("models by kind", "GET", "/v1/models/categorized", members(OK, OK, OK)),
    Row("one model", "GET", "/v1/models/fake-small", members(OK, OK, OK)),
    Row("list byok keys", "GET", "/v1/byok/keys", members(OK, OK, OK)),
    Row("store own byok key", "POST", "/v1/byok/keys", members(CREATED, CREATED, CREATED),
        {"provider": "openai", "api_key": "sk-own-provider-key-1234"}, changes=True),
    Row("store org byok key", "POST", "/v1/byok/keys", members(NOT_AN_ORG_ADMIN, CREATED, CREATED),
        {"provider": "openai", "api_key": "sk-org-provider-key-5678", "scope": "org"}, audits=("byok.put",)),
    Row("delete org byok key", "DELETE", f"/v1/byok/keys/openai{ORG_SCOPE}",
        members(NOT_AN_ORG_ADMIN, OK, BYOK_NOT_FOUND), audits=("byok.delete",)),
    Row("toggle org byok key", "POST", f"/v1/byok/keys/openai/toggle{ORG_SCOPE}",
        members(NOT_AN_ORG_ADMIN, OK, BYOK_NOT_FOUND), {"enabled": False}, audits=("byok.toggle",)),
    Row("test org byok key", "POST", f"/v1/byok/keys/openai/test{ORG_SCOPE}",
        members(NOT_AN_ORG_ADMIN, OK, BYOK_NOT_FOUND)),
    Row("org byok usage", "GET", f"/v1/byok/keys/openai/usage{ORG_SCOPE}", members(NOT_AN_ORG_ADMIN, OK, OK)),
]

CELLS = [pytest.param(row, caller, id=f"{row.name}-{caller}") for row in ADMIN_ROWS + CALLER_ROWS for caller in CALLERS]


@pytest.mark.parametrize(("row", "caller"), CELLS)
async def test_cell(row: Row, caller: str, shared_world: World, pg: services.Service, lanes_template: str) -> None:
    status, _ = row.expect.get(caller, UNAUTHENTICATED)
    if status in (200, 201) and row.mutates:  # an allowed change gets its own copy of the world
        async with lanes_copy(pg, lanes_template) as dsn, open_world(dsn) as world:
            await check_cell(world, row, caller)
    else:  # everything else must leave the shared copy as it was
        await check_cell(shared_world, row, caller)


async def check_cell(world: World, row: Row, caller: str) -> None:
    status, code = row.expect.get(caller, UNAUTHENTICATED)
    allowed = status in (200, 201)
    before = await snapshot(world.pool)
    response = await world.call(caller, row.method, row.path, row.body, row.extra)
    media = "text/csv; charset=utf-8" if allowed and ".csv?" in row.path else "application/json"  # the downloads
    assert response.headers["content-type"] == media, response.text
    if allowed:
        assert response.status_code == status, response.text
    else:
        error = response.json()["error"]
        assert (response.status_code, error["type"], error["code"], error["param"]) == (
            status, TYPES[status], code, None), response.text
    after = await snapshot(world.pool)
    if not (allowed and row.mutates):
        assert after == before
        return
    added = after["admin_audit"][len(before["admin_audit"]):]
    assert after["admin_audit"][:len(before["admin_audit"])] == before["admin_audit"]
    assert [(a["actor"], a["action"]) for a in added] == [(ACTORS[caller], action) for action in row.audits]
    if caller in ORG_OF:  # an org admin's change stays in their org, and so does its record
        assert {a["org_id"] for a in added} <= {ORG_OF[caller]}
        assert outside(after, ORG_OF[caller]) == outside(before, ORG_OF[caller])


def outside(snap: dict[str, list[dict[str, Any]]], org: str) -> dict[str, list[dict[str, Any]]]:
    """The snapshot without `org`'s own rows (its org row, memberships, keys, pool, journal, audit)."""
    own = {"orgs": "id", "memberships": "org_id", "api_keys": "org_id", "provider_keys": "org_id",
           "pools": "org_id", "grants": "org_id", "journal": "org_id", "admin_audit": "org_id",
           "budget_thresholds": "org_id", "export_outbox": "org_id"}
    return {table: [r for r in rows if table not in own or r[own[table]] != org] for table, rows in snap.items()}


def test_the_matrix_covers_every_admin_and_caller_route(shared_world: World) -> None:
    """Every method and path the app serves under /admin and /v1 has its row (/api/v1/llm serves the
    same endpoints as /v1)."""
    served = {(method, route.path) for route in shared_world.routes for method in getattr(route, "methods", ())
              if method != "HEAD" and route.path.startswith(("/admin/", "/v1/"))}
    covered = {(row.method, _template(row.path)) for row in ADMIN_ROWS + CALLER_ROWS}
    assert served == covered - {("GET", "/api/v1/llm/credits")}


def _template(path: str) -> str:
    """The route template a concrete path of the matrix matches."""
    path = path.split("?")[0]
    for concrete, name in ((A, "{org}"), (B, "{org}"), ("org_missing", "{org}"), (TARGET_A, "{user}"),
                           (TARGET_B, "{user}"), (MEMBER_A, "{user}"), (LONER, "{user}"), ("usr_missing", "{user}"),
                           (KEY_IDS["target_a"], "{key}"), (KEY_IDS["target_b"], "{key}"), ("key_missing", "{key}"),
                           ("req-a1", "{request_id}"), ("req-b1", "{request_id}"), ("keys/openai", "keys/{provider}"),
                           ("models/fake-small", "models/{model_id:path}"), (PRICES.version, "{version}"),
                           ("pv_0000000000000000", "{version}"), ("dead-letters/123", "dead-letters/{event}")):
        path = path.replace(concrete, name)
    return path
