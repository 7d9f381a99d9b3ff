"""The attacks of issue 7 item 4, kept as regression tests, and the admin lanes' finer rules, through
the real app on the real PostgreSQL (tests/admin/world.py): the default org and lifting an operator's
suspension are the operator's; an org admin's answers say nothing about ids outside their org; keys an
org admin mints are bound to their org; the audit log pages each row exactly once."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from proxy.errors import ProxyError

from .world import ADMIN_A, KEYS, LONER, MEMBER_A, TARGET_A, TARGET_B, A, B, World, hold, spent


def error(response: httpx.Response) -> tuple[int, str, str | None]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["param"]


async def test_operator_default_in_a_clears_the_default_in_b_and_b_audits_it(world: World) -> None:
    await world.call("operator", "PUT", f"/admin/orgs/{A}/members/{TARGET_B}", {"role": "member"})
    # the attack: A's admin making B's member default to A. Refused, and B's row is untouched
    attack = await world.call("admin_a", "PUT", f"/admin/orgs/{A}/members/{TARGET_B}", {"default": True})
    assert error(attack) == (403, "operator_only", None)
    assert (await world.membership(B, TARGET_B) or {})["is_default"] is True
    moved = await world.call("operator", "PUT", f"/admin/orgs/{A}/members/{TARGET_B}", {"default": True})
    assert (moved.status_code, moved.json()["default"]) == (200, True)
    assert (await world.membership(B, TARGET_B) or {})["is_default"] is False
    b_audit = await world.call("admin_b", "GET", f"/admin/orgs/{B}/audit", extra={})
    assert [(e["actor"], e["action"], e["target"], e["detail"]) for e in b_audit.json()["data"]] == [
        ("operator", "member.default_cleared", TARGET_B, {"default": False})]
    a_audit = (await world.call("operator", "GET", f"/admin/orgs/{A}/audit")).json()["data"]
    assert [(e["actor"], e["action"], e["target"]) for e in a_audit] == [
        ("operator", "member.put", TARGET_B), ("operator", "member.put", TARGET_B)]
    assert A not in str(b_audit.json())  # B's admin learns nothing about A


async def test_an_org_admin_cannot_lift_the_operators_suspension(world: World) -> None:
    path = f"/admin/orgs/{A}/members/{TARGET_A}"
    assert (await world.call("operator", "PUT", path, {"suspended": True})).status_code == 200
    assert await world.membership(A, TARGET_A) == {"role": "member", "is_default": True, "suspended": True,
                                                   "suspended_by": "operator", "allocation_millicredits": None}
    lift = await world.call("admin_a", "PUT", path, {"suspended": False, "allocation_millicredits": 9})
    assert error(lift) == (403, "operator_only", None)
    # suspending it again keeps it the operator's; other fields still change
    again = await world.call("admin_a", "PUT", path, {"suspended": True, "allocation_millicredits": 9})
    assert (again.status_code, again.json()["suspended_by"], again.json()["allocation_millicredits"]) == (
        200, "operator", 9)
    assert error(await world.call("admin_a", "PUT", path, {"suspended": False})) == (403, "operator_only", None)
    assert (await world.call("operator", "PUT", path, {"suspended": False})).status_code == 200
    assert (await world.membership(A, TARGET_A) or {})["suspended_by"] is None


async def test_an_org_admin_lifts_only_an_org_admins_suspension(world: World) -> None:
    path = f"/admin/orgs/{A}/members/{MEMBER_A}"
    suspended = await world.call("admin_a", "PUT", path, {"suspended": True})
    assert (suspended.status_code, suspended.json()["suspended"], suspended.json()["suspended_by"]) == (
        200, True, "org_admin")
    assert error(await world.call("member_a", "GET", "/v1/credits")) == (403, "suspended", None)
    lifted = await world.call("admin_a", "PUT", path, {"suspended": False})
    assert (lifted.status_code, lifted.json()["suspended"], lifted.json()["suspended_by"]) == (200, False, None)
    assert (await world.call("member_a", "GET", "/v1/credits")).status_code == 200
    # the operator taking an org admin's suspension over makes it the operator's
    await world.call("admin_a", "PUT", path, {"suspended": True})
    await world.call("operator", "PUT", path, {"suspended": True})
    assert error(await world.call("admin_a", "PUT", path, {"suspended": False})) == (403, "operator_only", None)


async def test_a_suspension_from_before_the_lanes_is_the_operators(world: World) -> None:
    await world.pool.execute("UPDATE creditgate.memberships SET suspended = true, suspended_by = NULL "
                             "WHERE org_id = $1 AND user_id = $2", A, TARGET_A)
    lift = await world.call("admin_a", "PUT", f"/admin/orgs/{A}/members/{TARGET_A}", {"suspended": False})
    assert error(lift) == (403, "operator_only", None)
    assert (await world.membership(A, TARGET_A) or {})["suspended"] is True


async def test_a_suspended_org_admin_cannot_lift_their_own_suspension(world: World) -> None:
    await world.call("operator", "PUT", f"/admin/orgs/{A}/members/{MEMBER_A}", {"role": "admin"})
    _, key = await _mint(world, "operator", MEMBER_A, A)
    second_admin = {"authorization": f"Bearer {key}"}
    own = f"/admin/orgs/{A}/members/{ADMIN_A}"
    assert (await world.call("nobody", "PUT", own, {"suspended": True}, extra=second_admin)).status_code == 200
    lift = await world.call("admin_a", "PUT", own, {"suspended": False})
    assert error(lift) == (403, "suspended", None)
    assert (await world.membership(A, ADMIN_A) or {})["suspended"] is True


async def test_an_admin_removed_between_check_and_write_changes_nothing(world: World) -> None:
    """update_member checks the actor's admin role in the same transaction as the write."""
    await world.pool.execute("UPDATE creditgate.memberships SET role = 'member' WHERE org_id = $1 AND user_id = $2",
                             A, ADMIN_A)
    with pytest.raises(ProxyError) as refused:
        await world.directory.update_member(A, TARGET_A, {"allocation_millicredits": 1}, ADMIN_A)
    assert (refused.value.status, refused.value.code) == (403, "admin_required")
    assert (await world.membership(A, TARGET_A) or {})["allocation_millicredits"] is None


async def test_put_member_says_nothing_about_users_outside_the_org(world: World) -> None:
    answers = []
    for user in (TARGET_B, LONER, "usr_missing"):
        response = await world.call("admin_a", "PUT", f"/admin/orgs/{A}/members/{user}", {"role": "admin"})
        answers.append((response.status_code, response.json()))
    assert answers == [(404, {"error": {"message": "That user is not a member of this organization.",
                                        "type": "not_found_error", "param": None, "code": "member_not_found"}})] * 3
    assert await world.membership(A, TARGET_B) is None and await world.membership(A, LONER) is None


async def test_post_admin_keys_says_nothing_about_users_outside_the_org(world: World) -> None:
    before = await world.pool.fetchval("SELECT count(*) FROM creditgate.api_keys")
    answers = []
    for body in ({"user_id": TARGET_B}, {"user_id": LONER}, {"user_id": "usr_missing"},
                 {"user_id": TARGET_B, "org_id": A}, {"user_id": "usr_missing", "org_id": A}):
        response = await world.call("admin_a", "POST", "/admin/keys", body)
        answers.append((response.status_code, response.json()))
    assert answers == [(404, {"error": {"message": "That user is not a member of this organization.",
                                        "type": "not_found_error", "param": None, "code": "member_not_found"}})] * 5
    assert await world.pool.fetchval("SELECT count(*) FROM creditgate.api_keys") == before


async def test_a_key_an_org_admin_mints_is_bound_to_their_org_and_never_spends_elsewhere(world: World) -> None:
    await world.call("operator", "PUT", f"/admin/orgs/{B}/members/{TARGET_A}", {"role": "member"})
    key_id, key = await _mint(world, "admin_a", TARGET_A)
    row = await world.pool.fetchrow("SELECT user_id, org_id FROM creditgate.api_keys WHERE id = $1", key_id)
    assert dict(row) == {"user_id": TARGET_A, "org_id": A}
    # the unbound key of the attack is the operator's to mint
    unbound = await world.call("admin_a", "POST", "/admin/keys", {"user_id": TARGET_A, "org_id": None})
    assert (unbound.status_code, unbound.json()["org_id"]) == (201, A)
    via_b = await world.call("nobody", "GET", "/v1/credits", extra={"authorization": f"Bearer {key}", "x-org-id": B})
    assert error(via_b) == (403, "not_a_member", None)
    in_a = await world.call("nobody", "GET", "/v1/credits", extra={"authorization": f"Bearer {key}"})
    assert (in_a.status_code, in_a.json()["org_id"]) == (200, A)


async def test_an_org_admin_cannot_mint_a_key_for_another_admin_of_their_org(world: World) -> None:
    """A key for a fellow admin would let A's admin act, and be audited, as them."""
    await world.call("operator", "PUT", f"/admin/orgs/{A}/members/{TARGET_A}", {"role": "admin"})
    before = await world.pool.fetchval("SELECT count(*) FROM creditgate.api_keys")
    refused = await world.call("admin_a", "POST", "/admin/keys", {"user_id": TARGET_A})
    assert error(refused) == (403, "operator_only", None)
    assert await world.pool.fetchval("SELECT count(*) FROM creditgate.api_keys") == before
    own_id, _ = await _mint(world, "admin_a", ADMIN_A)  # their own is fine
    by_operator = await world.call("operator", "POST", "/admin/keys", {"user_id": TARGET_A, "org_id": A})
    assert by_operator.status_code == 201 and own_id.startswith("key_")


async def test_org_admins_read_only_their_orgs_rows(world: World) -> None:
    keys = (await world.call("admin_a", "GET", "/admin/keys")).json()["data"]
    assert sorted((k["id"], k["org_id"]) for k in keys) == [
        ("key_admin_a", A), ("key_member_a", A), ("key_target_a", A)]
    of_b_user = (await world.call("admin_a", "GET", f"/admin/keys?user_id={TARGET_B}")).json()
    assert of_b_user == {"data": [], "has_more": False}
    org = (await world.call("admin_a", "GET", f"/admin/orgs/{A}")).json()
    assert sorted(m["user_id"] for m in org["members"]) == sorted([MEMBER_A, ADMIN_A, TARGET_A])
    usage = (await world.call("admin_a", "GET", f"/admin/orgs/{A}/usage?group_by=user")).json()["data"]
    assert [(u["user"], u["charged_millicredits"]) for u in usage] == [(MEMBER_A, 700)]
    b_usage = await world.call("admin_a", "GET", f"/admin/orgs/{A}/usage?group_by=user&user_id={TARGET_B}")
    assert b_usage.json() == {"data": [], "has_more": False}
    ledger = (await world.call("admin_a", "GET", f"/admin/orgs/{A}/ledger")).json()["data"]
    assert {e["user_id"] for e in ledger} == {MEMBER_A, None}


async def test_attribution_and_the_csv_download_stay_in_their_lane(world: World) -> None:
    """The same end user and tag in both orgs and on two members of A: an org admin's groups and CSV hold
    only their org's records, a member's only their own, and B's records never show through a filter."""
    for org, user, rid in ((A, MEMBER_A, "req-a2"), (A, TARGET_A, "req-a3"), (B, TARGET_B, "req-b2")):
        await world.ledger.reserve(replace(hold(org, user, rid, 900), end_user="shared-customer", tags=("shared",)))
        await world.ledger.settle(org, rid, spent(100))
    now = datetime.now(UTC)
    window = f"start={now - timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}&end={now + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}"

    async def rows(caller: str, path: str) -> list[tuple[str, str]]:
        response = await world.call(caller, "GET", path)
        assert response.status_code == 200, response.text
        return [(r[0], r[2]) for r in csv.reader(io.StringIO(response.text))][1:]

    assert await rows("admin_a", f"/admin/orgs/{A}/usage.csv?{window}") == [
        ("req-a1", MEMBER_A), ("req-a2", MEMBER_A), ("req-a3", TARGET_A)]
    assert await rows("admin_a", f"/admin/orgs/{A}/usage.csv?{window}&user_id={TARGET_B}") == []
    assert await rows("member_a", f"/v1/usage.csv?{window}&tag=shared") == [("req-a2", MEMBER_A)]
    assert await rows("admin_a", f"/v1/usage.csv?{window}") == []  # an org admin's own records: none
    assert await rows("admin_b", f"/admin/orgs/{B}/usage.csv?{window}&end_user=shared-customer") == [
        ("req-b2", TARGET_B)]
    assert error(await world.call("admin_a", "GET", f"/admin/orgs/{B}/usage.csv?{window}")) == (
        403, "not_a_member", None)
    assert error(await world.call("member_a", "GET", f"/admin/orgs/{A}/usage.csv?{window}")) == (
        403, "admin_required", None)
    by_tag = (await world.call("admin_a", "GET", f"/admin/orgs/{A}/usage?group_by=tag")).json()["data"]
    assert [(g["tag"], g["requests"], g["charged_millicredits"]) for g in by_tag] == [
        ("shared", 2, 200), (None, 1, 700)]
    mine = (await world.call("member_a", "GET", "/v1/usage?group_by=end_user&tag=shared")).json()["data"]
    assert [(g["end_user"], g["requests"], g["charged_millicredits"]) for g in mine] == [("shared-customer", 1, 100)]
    keys = (await world.call("admin_b", "GET", f"/admin/orgs/{B}/usage?group_by=key_id")).json()["data"]
    assert [(g["key_id"], g["requests"]) for g in keys] == [("key_x", 2)]


async def test_an_org_admin_reads_a_members_allocation_as_the_member_sees_it(world: World) -> None:
    """Used and remaining, in millicredits, the very numbers of the member's own GET /v1/credits, on
    GET /admin/orgs/{org}/members/{user} and in GET /admin/orgs/{org}'s member list."""
    await world.call("operator", "PUT", f"/admin/orgs/{A}/members/{MEMBER_A}", {"allocation_millicredits": 5_000})
    await world.ledger.reserve(hold(A, MEMBER_A, "req-lane-held", 250))
    own = (await world.call("member_a", "GET", "/v1/credits")).json()
    assert own["allocation"] == {"limit": 5_000, "used": 700, "held": 250, "available": 4_050, "period": "none",
                                 "resets_at": None}
    for caller in ("admin_a", "operator"):
        member = await world.call(caller, "GET", f"/admin/orgs/{A}/members/{MEMBER_A}")
        assert member.status_code == 200
        body = member.json()
        assert (body["org_id"], body["user_id"], body["role"], body["allocation_millicredits"]) == (
            A, MEMBER_A, "member", 5_000)
        assert body["allocation"] == own["allocation"]
        listed = {m["user_id"]: m["allocation"] for m in (await world.call(caller, "GET", f"/admin/orgs/{A}")).json()[
            "members"]}
        assert listed[MEMBER_A] == own["allocation"]
        # no limit: the pool's available credit, as the member's own /v1/credits says
        target = (await world.call("nobody", "GET", "/v1/credits", extra={
            "authorization": f"Bearer {KEYS['target_a']}"})).json()
        assert listed[TARGET_A] == target["allocation"] == {
            "limit": None, "used": 0, "held": 0, "available": target["pool"]["available"], "period": "none",
            "resets_at": None}


async def test_an_org_admin_reads_only_their_orgs_members(world: World) -> None:
    unknown = {"error": {"message": "That user is not a member of this organization.", "type": "not_found_error",
                         "param": None, "code": "member_not_found"}}
    for user in (TARGET_B, LONER, "usr_missing"):  # someone else's, nobody's, nobody: one answer
        answer = await world.call("admin_a", "GET", f"/admin/orgs/{A}/members/{user}")
        assert (answer.status_code, answer.json()) == (404, unknown)
    assert error(await world.call("admin_a", "GET", f"/admin/orgs/{B}/members/{TARGET_B}")) == (
        403, "not_a_member", None)
    assert error(await world.call("member_a", "GET", f"/admin/orgs/{A}/members/{TARGET_A}")) == (
        403, "admin_required", None)
    assert error(await world.call("nobody", "GET", f"/admin/orgs/{A}/members/{TARGET_A}")) == (
        401, "invalid_api_key", None)
    assert error(await world.call("admin_a", "GET", f"/admin/orgs/{A}/members/not-an-id")) == (
        400, "invalid_value", "user")


async def test_the_audit_log_pages_each_row_once_in_order(world: World) -> None:
    """More than 100 entries (ids past 9, 99 and 100, where text order and number order part), walked
    with small pages through both audit routes."""
    await world.pool.execute(
        """INSERT INTO creditgate.admin_audit (actor, action, org_id, target)
           SELECT 'operator', 'bulk', CASE WHEN i % 3 = 0 THEN $1 ELSE $2 END, i::text
             FROM generate_series(1, 130) i""",
        B, A)
    every = [r["id"] for r in await world.pool.fetch("SELECT id FROM creditgate.admin_audit ORDER BY id DESC")]
    of_a = [r["id"] for r in await world.pool.fetch(
        "SELECT id FROM creditgate.admin_audit WHERE org_id = $1 ORDER BY id DESC", A)]
    assert len(every) == 130 and len(of_a) == 87
    for caller, path, expected, limit in (("operator", "/admin/audit", every, 7),
                                          ("admin_a", f"/admin/orgs/{A}/audit", of_a, 10),
                                          ("operator", f"/admin/audit?org_id={A}", of_a, 3)):
        seen, pages = await _walk(world, caller, path, limit)
        assert seen == [str(i) for i in expected], path
        assert pages == -(-len(expected) // limit)


async def test_a_foreign_or_unknown_key_is_the_same_403_to_an_org_admin(world: World) -> None:
    answers = [await world.call("admin_a", "DELETE", f"/admin/keys/{key}") for key in ("key_target_b", "key_missing")]
    assert [(r.status_code, r.json()) for r in answers] == [(403, {"error": {
        "message": "That key is not in an organization you administer.", "type": "permission_error", "param": None,
        "code": "not_a_member"}})] * 2
    assert await world.pool.fetchval("SELECT revoked_at FROM creditgate.api_keys WHERE id = 'key_target_b'") is None
    assert world.revoked == []


async def _walk(world: World, caller: str, path: str, limit: int) -> tuple[list[str], int]:
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        sep = "&" if "?" in path else "?"
        page_path = f"{path}{sep}limit={limit}" + (f"&after={after}" if after else "")
        page: dict[str, Any] = (await world.call(caller, "GET", page_path)).json()
        seen += [e["id"] for e in page["data"]]
        pages += 1
        if not page["has_more"]:
            return seen, pages
        after = page["data"][-1]["id"]


async def _mint(world: World, caller: str, user: str, org: str | None = None) -> tuple[str, str]:
    body = {"user_id": user} | ({"org_id": org} if org else {})
    response = await world.call(caller, "POST", "/admin/keys", body)
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["key"]

