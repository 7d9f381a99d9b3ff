"""Users, memberships and API keys through the admin routes."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette

from proxy.admin.routes import admin_routes
from proxy.config.settings import Secret
from proxy.directory.apikeys import hash_key
from proxy.errors import ProxyError

from .conftest import OPERATOR, POWER_LEVELS, TIERS, TOKEN, Admin, bearer, render


async def test_create_and_list_users(admin: Admin) -> None:
    created = await admin.call("POST", "/admin/users", {"email": " Ann@Acme.TEST ", "name": "Ann"})
    assert created.status_code == 201
    user = created.json()
    assert user["id"].startswith("usr_")
    assert (user["email"], user["name"]) == ("ann@acme.test", "Ann")
    nameless = await admin.ok("POST", "/admin/users", {"email": "bob@acme.test"})
    assert nameless["name"] == ""
    listed = await admin.ok("GET", "/admin/users")
    assert [u["email"] for u in listed["data"]] == ["ann@acme.test", "bob@acme.test"]
    found = await admin.ok("GET", "/admin/users", email="Bob@Acme.test")
    assert found == {"data": [nameless], "has_more": False}
    assert (await admin.ok("GET", "/admin/users", email="nobody@acme.test"))["data"] == []


async def test_same_email_twice_is_409_whatever_its_case(admin: Admin) -> None:
    await admin.user("ann@acme.test")
    again = await admin.call("POST", "/admin/users", {"email": "ANN@acme.test", "name": "Other"})
    assert again.status_code == 409
    assert again.json() == {"error": {"message": "A user with this email already exists.",
                                      "type": "conflict_error", "param": None, "code": "email_taken"}}


async def test_put_member_upserts_and_changes_only_what_is_sent(admin: Admin) -> None:
    org, user = await admin.org(), await admin.user("ann@acme.test")
    created = await admin.member(org, user, allocation_millicredits=10_000, allocation_period="day",
                                 power_level="eco")
    assert {k: created[k] for k in ("org_id", "user_id", "role", "allocation_millicredits", "allocation_period",
                                    "default", "power_level", "suspended")} == {
        "org_id": org, "user_id": user, "role": "member", "allocation_millicredits": 10_000,
        "allocation_period": "day", "default": False, "power_level": "eco", "suspended": False,
    }
    updated = await admin.member(org, user, role="admin", suspended=True)
    assert (updated["role"], updated["suspended"], updated["allocation_millicredits"], updated["power_level"]) == (
        "admin", True, 10_000, "eco"
    )
    cleared = await admin.member(org, user, allocation_millicredits=None, power_level=None)
    assert (cleared["allocation_millicredits"], cleared["power_level"], cleared["role"]) == (None, None, "admin")


async def test_one_default_org_per_user(admin: Admin) -> None:
    a, b, user = await admin.org("A"), await admin.org("B"), await admin.user("ann@acme.test")
    await admin.member(a, user, default=True)
    await admin.member(b, user, default=True)
    memberships = {m.org_id: m.is_default for m in await admin.directory.memberships(user)}
    assert memberships == {a: False, b: True}


async def test_delete_member_keeps_the_user_and_is_404_the_second_time(admin: Admin) -> None:
    org, user = await admin.org(), await admin.user("ann@acme.test")
    await admin.member(org, user)
    deleted = await admin.ok("DELETE", f"/admin/orgs/{org}/members/{user}")
    assert deleted == {"org_id": org, "user_id": user, "deleted": True}
    assert (await admin.ok("GET", f"/admin/orgs/{org}"))["members"] == []
    again = await admin.call("DELETE", f"/admin/orgs/{org}/members/{user}")
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "member_not_found"
    assert [u["id"] for u in (await admin.ok("GET", "/admin/users"))["data"]] == [user]


async def test_member_of_unknown_org_or_user_is_404(admin: Admin) -> None:
    org, user = await admin.org(), await admin.user("ann@acme.test")
    no_org = await admin.call("PUT", f"/admin/orgs/org_missing/members/{user}", {"role": "member"})
    assert (no_org.status_code, no_org.json()["error"]["code"]) == (404, "org_not_found")
    no_user = await admin.call("PUT", f"/admin/orgs/{org}/members/usr_missing", {"role": "member"})
    assert (no_user.status_code, no_user.json()["error"]["code"]) == (404, "user_not_found")


async def test_create_key_shows_it_once_and_it_authenticates(admin: Admin) -> None:
    org, user = await admin.org(), await admin.user("ann@acme.test")
    await admin.member(org, user)
    created = await admin.call("POST", "/admin/keys", {"user_id": user, "org_id": org, "name": "laptop"})
    assert created.status_code == 201
    body = created.json()
    key = body.pop("key")
    assert key.startswith("sk-cg-") and len(key) == 49
    assert body["prefix"] == key[:10]
    assert (body["user_id"], body["org_id"], body["name"], body["revoked"]) == (user, org, "laptop", False)
    stored = await admin.directory.api_key(hash_key(key))
    assert stored is not None and (stored.id, stored.user_id, stored.bound_org_id) == (body["id"], user, org)
    listed = await admin.ok("GET", "/admin/keys", user_id=user)
    assert listed == {"data": [body], "has_more": False}
    assert key not in str(listed) and hash_key(key) not in str(listed)


async def test_unbound_key_needs_no_membership_but_a_bound_one_does(admin: Admin) -> None:
    org, user = await admin.org(), await admin.user("ann@acme.test")
    unbound = await admin.ok("POST", "/admin/keys", {"user_id": user})
    assert unbound["org_id"] is None
    refused = await admin.call("POST", "/admin/keys", {"user_id": user, "org_id": org})
    assert refused.status_code == 403
    assert refused.json()["error"] == {"message": "The user is not a member of that organization.",
                                       "type": "permission_error", "param": None, "code": "not_a_member"}
    for body, code in [({"user_id": "usr_missing"}, "user_not_found"),
                       ({"user_id": user, "org_id": "org_missing"}, "org_not_found")]:
        missing = await admin.call("POST", "/admin/keys", body)
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, code)


async def test_revoke_marks_the_key_and_broadcasts_its_hash(admin: Admin) -> None:
    org, user = await admin.org(), await admin.user("ann@acme.test")
    await admin.member(org, user)
    key_id, key = await admin.key(user, org)
    revoked = await admin.ok("DELETE", f"/admin/keys/{key_id}")
    assert (revoked["id"], revoked["revoked"]) == (key_id, True)
    assert revoked["revoked_at"] is not None
    assert admin.revoked == [hash_key(key)]
    stored = await admin.directory.api_key(hash_key(key))
    assert stored is not None and stored.revoked is True
    # a revoked key no longer opens the admin API either
    denied = await admin.call("GET", "/admin/keys", headers=bearer(key), org_id=org)
    assert (denied.status_code, denied.json()["error"]["code"]) == (401, "revoked_api_key")
    again = await admin.ok("DELETE", f"/admin/keys/{key_id}")
    assert again["revoked_at"] == revoked["revoked_at"]
    assert admin.revoked == [hash_key(key)] * 2
    missing = await admin.call("DELETE", "/admin/keys/key_missing")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "key_not_found")


async def test_list_keys_filters_by_user_and_org(admin: Admin) -> None:
    a, b = await admin.org("A"), await admin.org("B")
    ann, bob = await admin.user("ann@acme.test"), await admin.user("bob@acme.test")
    for org in (a, b):
        await admin.member(org, ann)
    await admin.member(a, bob)
    ann_a, _ = await admin.key(ann, a)
    ann_b, _ = await admin.key(ann, b)
    bob_a, _ = await admin.key(bob, a)
    ann_free, _ = await admin.key(ann)

    async def ids(**params: str) -> list[str]:
        return [k["id"] for k in (await admin.ok("GET", "/admin/keys", **params))["data"]]

    assert await ids(user_id=ann) == sorted([ann_a, ann_b, ann_free])
    assert await ids(org_id=a) == sorted([ann_a, bob_a])
    assert await ids(user_id=ann, org_id=b) == [ann_b]
    assert await ids() == sorted([ann_a, ann_b, bob_a, ann_free])


async def test_a_failed_revocation_broadcast_is_503_and_retrying_broadcasts_again(admin: Admin) -> None:
    user = await admin.user("ann@acme.test")
    key_id, key = await admin.key(user)
    calls: list[str] = []

    async def failing(key_hash: str) -> None:
        calls.append(key_hash)
        if len(calls) == 1:
            raise ConnectionError("redis://:hunter2@127.0.0.1:1 refused")

    app = Starlette(routes=admin_routes(
        admin.directory, admin.ledger, admin_token=Secret(TOKEN), lookup_key=admin.directory.api_key,
        on_revoke=failing, tiers=TIERS, power_levels=POWER_LEVELS,
    ), exception_handlers={ProxyError: render})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a.test") as http:
        first = await http.delete(f"/admin/keys/{key_id}", headers=OPERATOR)
        assert first.status_code == 503
        assert first.json()["error"]["code"] == "revocation_not_broadcast"
        assert "hunter2" not in first.text
        stored = await admin.directory.api_key(hash_key(key))
        assert stored is not None and stored.revoked  # revoked in the database all the same
        second = await http.delete(f"/admin/keys/{key_id}", headers=OPERATOR)
        assert second.status_code == 200
    assert calls == [hash_key(key)] * 2
