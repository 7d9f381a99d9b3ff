"""Bad input on every admin route: 400 with the field named, 404 for unknown ids, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from .conftest import OPERATOR, Admin

GRANT = {"amount_millicredits": 100, "reason": "r", "idempotency_key": "k"}


@pytest.fixture(scope="module")
async def ids(shared_admin: Admin) -> dict[str, str]:
    org, user = await shared_admin.org(), await shared_admin.user("ann@acme.test")
    await shared_admin.member(org, user)
    return {"org": org, "user": user}


@pytest.fixture
async def admin(shared_admin: Admin) -> AsyncIterator[Admin]:
    """The module's app; every test here is refused, so nothing may change."""
    before = await shared_admin.audit()
    yield shared_admin
    assert await shared_admin.audit() == before


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("POST", "/admin/orgs", {"name": "A", "tier": "platinum"}, "tier"),
        ("POST", "/admin/orgs", {"name": "", "tier": "free"}, "name"),
        ("POST", "/admin/orgs", {"name": 5, "tier": "free"}, "name"),
        ("POST", "/admin/orgs", {"name": "x" * 201, "tier": "free"}, "name"),
        ("POST", "/admin/orgs", {"name": "a\u0000b", "tier": "free"}, "name"),
        ("POST", "/admin/users", {"email": "a\u0000@b.c"}, "email"),
        ("POST", "/admin/orgs/{org}/grants", {**GRANT, "reason": "nul\u0000"}, "reason"),
        ("POST", "/admin/orgs", {"name": "A", "tier": "free", "plan": "x"}, "plan"),
        ("PATCH", "/admin/orgs/{org}", {"tier": "gold"}, "tier"),
        ("PATCH", "/admin/orgs/{org}", {"suspended": "yes"}, "suspended"),
        ("PATCH", "/admin/orgs/{org}", {"name": "renamed"}, "name"),
        ("PATCH", "/admin/orgs/{org}", {}, None),
        ("POST", "/admin/orgs/{org}/grants", {**GRANT, "amount_millicredits": -5}, "amount_millicredits"),
        ("POST", "/admin/orgs/{org}/grants", {**GRANT, "amount_millicredits": 0}, "amount_millicredits"),
        ("POST", "/admin/orgs/{org}/grants", {**GRANT, "amount_millicredits": 1.5}, "amount_millicredits"),
        ("POST", "/admin/orgs/{org}/grants", {**GRANT, "amount_millicredits": "100"}, "amount_millicredits"),
        ("POST", "/admin/orgs/{org}/grants", {**GRANT, "amount_millicredits": True}, "amount_millicredits"),
        ("POST", "/admin/orgs/{org}/grants", {**GRANT, "amount_millicredits": 10**16}, "amount_millicredits"),
        ("POST", "/admin/orgs/{org}/grants", {**GRANT, "reason": ""}, "reason"),
        ("POST", "/admin/orgs/{org}/grants", {**GRANT, "idempotency_key": 7}, "idempotency_key"),
        ("POST", "/admin/orgs/{org}/grants", {**GRANT, "expires_at": "tomorrow"}, "expires_at"),
        ("POST", "/admin/orgs/{org}/grants", {**GRANT, "expires_at": "2999-01-01T00:00:00"}, "expires_at"),
        ("POST", "/admin/orgs/{org}/grants", {**GRANT, "expires_at": "2000-01-01T00:00:00Z"}, "expires_at"),
        ("POST", "/admin/orgs/{org}/adjustments", {**GRANT, "amount_millicredits": 0}, "amount_millicredits"),
        ("POST", "/admin/orgs/{org}/adjustments", {**GRANT, "expires_at": "2999-01-01T00:00:00Z"}, "expires_at"),
        ("GET", "/admin/orgs/{org}/usage?group_by=week", None, "group_by"),
        ("GET", "/admin/orgs/{org}/usage?start=yesterday", None, "start"),
        ("GET", "/admin/orgs/{org}/usage?start=2026-11-02T00:00:00Z&end=2026-11-01T00:00:00Z", None, "end"),
        ("GET", "/admin/orgs/{org}/usage?user_id=bob", None, "user_id"),
        ("GET", "/admin/orgs/{org}/ledger?limit=0", None, "limit"),
        ("GET", "/admin/orgs/{org}/ledger?limit=501", None, "limit"),
        ("GET", "/admin/orgs/{org}/ledger?limit=ten", None, "limit"),
        ("GET", "/admin/orgs?after=%20", None, "after"),
        ("POST", "/admin/users", {"email": "not-an-email", "name": "A"}, "email"),
        ("POST", "/admin/users", {"email": "a@b", "name": "A"}, "email"),
        ("POST", "/admin/users", {"email": ["a@b.c"]}, "email"),
        ("POST", "/admin/users", {"email": "a@b.c", "name": 3}, "name"),
        ("PUT", "/admin/orgs/{org}/members/{user}", {"role": "owner"}, "role"),
        ("PUT", "/admin/orgs/{org}/members/{user}", {"role": None}, "role"),
        ("PUT", "/admin/orgs/{org}/members/{user}", {"allocation_millicredits": -1}, "allocation_millicredits"),
        ("PUT", "/admin/orgs/{org}/members/{user}", {"allocation_millicredits": "5"}, "allocation_millicredits"),
        ("PUT", "/admin/orgs/{org}/members/{user}", {"allocation_period": "year"}, "allocation_period"),
        ("PUT", "/admin/orgs/{org}/members/{user}", {"default": "true"}, "default"),
        ("PUT", "/admin/orgs/{org}/members/{user}", {"power_level": "turbo"}, "power_level"),
        ("PUT", "/admin/orgs/{org}/members/{user}", {"suspended": 1}, "suspended"),
        ("PUT", "/admin/orgs/{org}/members/{user}", {"allocation": 5}, "allocation"),
        ("PUT", "/admin/orgs/not-an-org/members/{user}", {}, "org"),
        ("PUT", "/admin/orgs/{org}/members/org_wrongkind", {}, "user"),
        ("DELETE", "/admin/orgs/{org}/members/user1", None, "user"),
        ("GET", "/admin/orgs/usr_x", None, "org"),
        ("GET", "/admin/orgs/org_bad%20id", None, "org"),
        ("POST", "/admin/keys", {"user_id": "bob"}, "user_id"),
        ("POST", "/admin/keys", {"user_id": "{user}", "org_id": "{user}"}, "org_id"),
        ("POST", "/admin/keys", {"user_id": "{user}", "name": ""}, "name"),
        ("GET", "/admin/keys?user_id=org_x", None, "user_id"),
        ("GET", "/admin/keys?org_id=x", None, "org_id"),
        ("DELETE", "/admin/keys/org_x", None, "key"),
    ],
)
async def test_invalid_values_are_400_naming_the_field(
    admin: Admin, ids: dict[str, str], method: str, path: str, body: Any, param: str | None
) -> None:
    if isinstance(body, dict):
        body = {k: v.format(**ids) if isinstance(v, str) else v for k, v in body.items()}
    response = await admin.call(method, path.format(**ids), body)
    assert response.status_code == 400, response.text
    err = response.json()["error"]
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", "invalid_value", param)


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/admin/orgs", {"tier": "free"}, "name"),
        ("POST", "/admin/orgs", {"name": "A"}, "tier"),
        ("POST", "/admin/orgs/{org}/grants", {"reason": "r", "idempotency_key": "k"}, "amount_millicredits"),
        ("POST", "/admin/orgs/{org}/grants", {"amount_millicredits": 1, "idempotency_key": "k"}, "reason"),
        ("POST", "/admin/orgs/{org}/grants", {"amount_millicredits": 1, "reason": "r"}, "idempotency_key"),
        ("POST", "/admin/orgs/{org}/adjustments", {"amount_millicredits": 1, "reason": "r"}, "idempotency_key"),
        ("POST", "/admin/users", {"name": "A"}, "email"),
        ("POST", "/admin/keys", {"name": "A"}, "user_id"),
    ],
)
async def test_missing_fields_are_400(
    admin: Admin, ids: dict[str, str], method: str, path: str, body: Any, field: str
) -> None:
    response = await admin.call(method, path.format(**ids), body)
    assert response.json() == {"error": {"message": f"Missing required field: '{field}'.",
                                         "type": "invalid_request_error", "param": field, "code": "missing_field"}}
    assert response.status_code == 400


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"[1, 2]", b'"text"', b"null", b"\xff\xfe"])
async def test_bodies_that_are_not_json_objects_are_invalid_json(admin: Admin, ids: dict[str, str], raw: bytes) -> None:
    for method, path in [("POST", "/admin/orgs"), ("PATCH", "/admin/orgs/{org}"), ("POST", "/admin/users"),
                         ("POST", "/admin/orgs/{org}/grants"), ("PUT", "/admin/orgs/{org}/members/{user}"),
                         ("POST", "/admin/keys"), ("POST", "/admin/orgs/{org}/adjustments")]:
        response = await admin.http.request(method, path.format(**ids), content=raw, headers=OPERATOR)
        assert response.status_code == 400, (method, path)
        assert response.json()["error"]["code"] == "invalid_json"
