"""Who may do what: the operator, an org admin on their own org, everyone else refused; the audit log."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import TOKEN, Admin, bearer

GRANT = {"amount_millicredits": 100, "reason": "r", "idempotency_key": "k"}


def error(response: Any) -> tuple[int, str, str]:
    return response.status_code, response.json()["error"]["type"], response.json()["error"]["code"]


async def test_missing_or_wrong_credentials_are_401(admin: Admin) -> None:
    cases: list[dict[str, Any]] = [
        {},
        {"authorization": "Bearer "},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": f"Bearer {TOKEN}x"},
        {"authorization": "Bearer sk-cg-" + "A" * 43},
        {"authorization": "Bearer t\u00f6ken".encode()},
    ]
    for headers in cases:
        response = await admin.http.get("/admin/orgs", headers=headers)
        assert error(response) == (401, "authentication_error", "invalid_api_key"), headers
        assert TOKEN not in response.text


async def test_org_admin_manages_their_own_org(admin: Admin) -> None:
    org = await admin.org()
    boss, auth = await admin.org_admin(org)
    shown = await admin.call("GET", f"/admin/orgs/{org}", headers=auth)
    assert shown.status_code == 200 and shown.json()["id"] == org
    ann = await admin.user("ann@acme.test")
    # adding a user to the org is the operator's (CONTRACT.md); changing an existing member is theirs
    adding = await admin.call("PUT", f"/admin/orgs/{org}/members/{ann}", {"allocation_millicredits": 7}, headers=auth)
    assert error(adding) == (404, "not_found_error", "member_not_found")
    await admin.member(org, ann)
    put = await admin.call("PUT", f"/admin/orgs/{org}/members/{ann}", {"allocation_millicredits": 7}, headers=auth)
    assert put.status_code == 200 and put.json()["allocation_millicredits"] == 7
    created = await admin.call("POST", "/admin/keys", {"user_id": ann}, headers=auth)  # bound: org implied
    assert created.status_code == 201 and created.json()["org_id"] == org
    key_id = created.json()["id"]
    listed = await admin.call("GET", "/admin/keys", headers=auth)  # their key is bound: the org is implied
    assert {(k["user_id"], k["org_id"]) for k in listed.json()["data"]} == {(boss, org), (ann, org)}
    assert key_id in {k["id"] for k in listed.json()["data"]}
    assert (await admin.call("DELETE", f"/admin/keys/{key_id}", headers=auth)).status_code == 200
    for path in (f"/admin/orgs/{org}/usage", f"/admin/orgs/{org}/ledger"):
        assert (await admin.call("GET", path, headers=auth)).status_code == 200, path
    assert (await admin.call("DELETE", f"/admin/orgs/{org}/members/{ann}", headers=auth)).status_code == 200
    actors = {(a["actor"], a["action"]) for a in await admin.audit() if a["actor"] != "operator"}
    assert actors == {(boss, "member.put"), (boss, "key.create"), (boss, "key.revoke"), (boss, "member.delete")}


async def test_org_admin_is_refused_on_another_org(admin: Admin) -> None:
    mine, other = await admin.org("Mine"), await admin.org("Other")
    _, auth = await admin.org_admin(mine)
    ann = await admin.user("ann@acme.test")
    await admin.member(other, ann)
    other_key, _ = await admin.key(ann, other)
    for method, path, body in [
        ("GET", f"/admin/orgs/{other}", None),
        ("PUT", f"/admin/orgs/{other}/members/{ann}", {"role": "admin"}),
        ("DELETE", f"/admin/orgs/{other}/members/{ann}", None),
        ("GET", f"/admin/orgs/{other}/usage", None),
        ("GET", f"/admin/orgs/{other}/ledger", None),
        ("POST", "/admin/keys", {"user_id": ann, "org_id": other}),
        ("GET", f"/admin/keys?org_id={other}", None),
        ("DELETE", f"/admin/keys/{other_key}", None),
        ("DELETE", "/admin/keys/key_unknown", None),
        ("GET", "/admin/orgs/org_unknown", None),
    ]:
        response = await admin.call(method, path, body, headers=auth)
        assert error(response) == (403, "permission_error", "not_a_member"), (method, path)
    assert (await admin.directory.get_key(other_key) or {})["revoked"] is False


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/admin/orgs", {"name": "New", "tier": "free"}),
        ("GET", "/admin/orgs", None),
        ("PATCH", "/admin/orgs/{org}", {"tier": "enterprise"}),
        ("PATCH", "/admin/orgs/{org}", {"suspended": True}),
        ("POST", "/admin/orgs/{org}/grants", GRANT),
        ("POST", "/admin/orgs/{org}/adjustments", GRANT),
        ("POST", "/admin/users", {"email": "new@acme.test"}),
        ("GET", "/admin/users", None),
    ],
)
async def test_org_admin_is_refused_on_operator_routes(admin: Admin, method: str, path: str, body: Any) -> None:
    org = await admin.org()
    boss, auth = await admin.org_admin(org)
    response = await admin.call(method, path.format(org=org), body, headers=auth)
    assert error(response) == (403, "permission_error", "operator_only")
    assert [a["actor"] for a in await admin.audit()].count(boss) == 0


async def test_plain_members_suspended_admins_and_foreign_bound_keys_are_refused(admin: Admin) -> None:
    org, other = await admin.org("Mine"), await admin.org("Other")
    member = await admin.user("m@acme.test")
    await admin.member(org, member)
    _, member_key = await admin.key(member, org)
    response = await admin.call("GET", f"/admin/orgs/{org}/ledger", headers=bearer(member_key))
    assert error(response) == (403, "permission_error", "admin_required")

    boss, auth = await admin.org_admin(org)
    await admin.member(org, boss, suspended=True)
    assert error(await admin.call("GET", f"/admin/orgs/{org}", headers=auth)) == (403, "permission_error", "suspended")
    await admin.member(org, boss, suspended=False)
    await admin.ok("PATCH", f"/admin/orgs/{org}", {"suspended": True})
    assert error(await admin.call("GET", f"/admin/orgs/{org}", headers=auth)) == (403, "permission_error", "suspended")
    await admin.ok("PATCH", f"/admin/orgs/{org}", {"suspended": False})

    # an admin of both orgs, whose key is bound to the other one, cannot use it here
    await admin.member(other, boss, role="admin")
    _, other_bound = await admin.key(boss, other)
    response = await admin.call("GET", f"/admin/orgs/{org}", headers=bearer(other_bound))
    assert error(response) == (403, "permission_error", "not_a_member")
    # an unbound key works on every org its user administers
    _, unbound = await admin.key(boss)
    for o in (org, other):
        assert (await admin.call("GET", f"/admin/orgs/{o}", headers=bearer(unbound))).status_code == 200


async def test_org_admin_keys_must_be_bound_to_their_org(admin: Admin) -> None:
    org = await admin.org()
    boss, auth = await admin.org_admin(org)
    _, unbound = await admin.key(boss)
    key_id, _ = await admin.key(boss)
    for method, path, body in [
        ("POST", "/admin/keys", {"user_id": boss}),
        ("GET", "/admin/keys", None),
        ("DELETE", f"/admin/keys/{key_id}", None),
    ]:
        response = await admin.call(method, path, body, headers=bearer(unbound))
        assert error(response) == (403, "permission_error", "operator_only"), (method, path)
    assert (await admin.call("DELETE", f"/admin/keys/{key_id}", headers=auth)).status_code == 403


async def test_audit_records_each_operator_action(admin: Admin) -> None:
    org = await admin.org()
    ann = await admin.user("ann@acme.test")
    await admin.member(org, ann, role="admin")
    key_id, _ = await admin.key(ann, org)
    await admin.ok("PATCH", f"/admin/orgs/{org}", {"tier": "free"})
    await admin.ok("POST", f"/admin/orgs/{org}/grants", GRANT)
    await admin.ok("POST", f"/admin/orgs/{org}/adjustments", {**GRANT, "idempotency_key": "a"})
    await admin.ok("DELETE", f"/admin/keys/{key_id}")
    await admin.ok("DELETE", f"/admin/orgs/{org}/members/{ann}")
    assert await admin.audit() == [
        {"actor": "operator", "action": "org.create", "org_id": org, "target": org},
        {"actor": "operator", "action": "user.create", "org_id": None, "target": ann},
        {"actor": "operator", "action": "member.put", "org_id": org, "target": ann},
        {"actor": "operator", "action": "key.create", "org_id": org, "target": key_id},
        {"actor": "operator", "action": "org.update", "org_id": org, "target": org},
        {"actor": "operator", "action": "org.grant", "org_id": org, "target": "k"},
        {"actor": "operator", "action": "org.adjust", "org_id": org, "target": "a"},
        {"actor": "operator", "action": "key.revoke", "org_id": org, "target": key_id},
        {"actor": "operator", "action": "member.delete", "org_id": org, "target": ann},
    ]


async def test_the_audit_log_is_readable_by_the_operator_and_each_org_admin_for_their_org(admin: Admin) -> None:
    mine, other = await admin.org("Mine"), await admin.org("Other")
    boss, auth = await admin.org_admin(mine)
    await admin.call("PUT", f"/admin/orgs/{mine}/members/{boss}", {"allocation_millicredits": 9}, headers=auth)
    await admin.ok("PATCH", f"/admin/orgs/{other}", {"tier": "free"})
    theirs = await admin.call("GET", f"/admin/orgs/{mine}/audit", headers=auth)
    assert theirs.status_code == 200
    assert [(e["actor"], e["action"], e["target"]) for e in theirs.json()["data"]] == [
        (boss, "member.put", boss),
        ("operator", "key.create", theirs.json()["data"][1]["target"]),
        ("operator", "member.put", boss),
        ("operator", "org.create", mine),
    ]
    assert theirs.json()["data"][0]["detail"] == {"allocation_millicredits": 9}
    denied = await admin.call("GET", f"/admin/orgs/{other}/audit", headers=auth)
    assert error(denied) == (403, "permission_error", "not_a_member")
    assert error(await admin.call("GET", "/admin/audit", headers=auth)) == (403, "permission_error", "operator_only")
    everything = await admin.ok("GET", "/admin/audit", limit=3)
    assert [e["action"] for e in everything["data"]] == ["org.update", "member.put", "key.create"]
    assert everything["has_more"] is True
    rest = await admin.ok("GET", "/admin/audit", after=everything["data"][-1]["id"])
    assert [e["action"] for e in rest["data"]] == ["member.put", "user.create", "org.create", "org.create"]
    assert rest["has_more"] is False
    only_other = await admin.ok("GET", "/admin/audit", org_id=other)
    assert [(e["action"], e["detail"]) for e in only_other["data"]] == [
        ("org.update", {"tier": "free"}), ("org.create", {"name": "Other", "tier": "starter"}),
    ]
