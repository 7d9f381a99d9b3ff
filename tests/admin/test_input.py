"""Bad times, cursors, limits and control characters on the admin and caller routes (issue 7, item 6):
each is the contract's 400 `invalid_value` naming its parameter, through the real app on the real
PostgreSQL, never a 500 or a text/plain answer, and the same on both sides."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .world import A, World, headers

BAD_TIMES = [
    "0000-01-01T00:00:00Z",  # year 0
    "99999-01-01T00:00:00Z",  # five-digit year
    "2026-01-01T00:00:00+99:00",  # offset of days
    "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00:00-23:60",
    "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
    "9999-12-31T23:59:59-01:00",  # after year 9999 once in UTC
    "2026-13-01T00:00:00Z",
    "2026-02-29T00:00:00Z",
    "2026-01-01T24:00:00Z",
    "2026-01-01T00:00:60Z",
    "\u0662\u0660\u0662\u0666-01-01T00:00:00Z",  # Arabic-Indic digits
    "2026-01-01T00:00:00Z\n",
    "2026-01-01T00:00:00.1234567890Z",
    "2026-01-01",
    "2026-01-01T00:00:00",
    "2026-W01-1T00:00:00Z",
    "",
]
USAGE_ROUTES = [("operator", f"/admin/orgs/{A}/usage"), ("admin_a", f"/admin/orgs/{A}/usage"),
                ("member_a", "/v1/usage"), ("admin_a", "/api/v1/llm/usage")]
SERIAL_LISTINGS = [("member_a", "/v1/credits/history"), ("operator", f"/admin/orgs/{A}/ledger"),
                   ("admin_a", f"/admin/orgs/{A}/audit"), ("operator", "/admin/audit")]
BAD_SERIAL_CURSORS = ["abc", "0", "-1", "+5", "05", "1e3", "1.0", "\uff19", "9223372036854775808",
                      "99999999999999999999999999", " 5", ""]


@pytest.fixture
async def world(shared_world: World) -> AsyncIterator[World]:
    """The module's copy of the world; nothing here may change it."""
    before = await shared_world.audit()
    yield shared_world
    assert await shared_world.audit() == before


async def invalid(world: World, caller: str, path: str, params: dict[str, str] | None = None) -> str | None:
    """The `param` of the 400 invalid_value `path` must answer (asserting everything else about it)."""
    response = await world.http.get(path, params=params, headers=headers(caller))
    assert response.headers["content-type"] == "application/json", response.text
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (set(error), error["type"], error["code"]) == (
        {"message", "type", "param", "code"}, "invalid_request_error", "invalid_value")
    return str(error["param"]) if error["param"] is not None else None


@pytest.mark.parametrize("raw", BAD_TIMES)
@pytest.mark.parametrize(("caller", "path"), USAGE_ROUTES)
async def test_out_of_range_or_malformed_times_are_400(world: World, caller: str, path: str, raw: str) -> None:
    assert await invalid(world, caller, path, {"start": raw}) == "start"
    assert await invalid(world, caller, path, {"start": "2026-01-01T00:00:00Z", "end": raw}) == "end"


@pytest.mark.parametrize("raw", BAD_TIMES[:8])
async def test_out_of_range_grant_expiry_is_400(world: World, raw: str) -> None:
    body = {"amount_millicredits": 5, "reason": "r", "idempotency_key": "never", "expires_at": raw}
    response = await world.call("operator", "POST", f"/admin/orgs/{A}/grants", body)
    assert (response.status_code, response.json()["error"]["code"], response.json()["error"]["param"]) == (
        400, "invalid_value", "expires_at")


@pytest.mark.parametrize(("caller", "path"), USAGE_ROUTES)
async def test_an_empty_or_reversed_window_is_400_naming_end_on_both_sides(world: World, caller: str,
                                                                           path: str) -> None:
    for start, end in (("2026-02-01T00:00:00Z", "2026-02-01T00:00:00Z"),
                       ("2026-02-01T01:00:00+01:00", "2026-02-01T00:00:00Z"),  # the same instant
                       ("2026-02-02T00:00:00Z", "2026-02-01T00:00:00Z")):
        assert await invalid(world, caller, path, {"start": start, "end": end}) == "end"


@pytest.mark.parametrize(("caller", "path"), USAGE_ROUTES)
async def test_the_widest_window_is_fine(world: World, caller: str, path: str) -> None:
    params = {"start": "0001-01-01T00:00:00Z", "end": "9999-12-31T23:59:59.999999999Z"}
    response = await world.http.get(path, params=params, headers=headers(caller))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("after", BAD_SERIAL_CURSORS)
@pytest.mark.parametrize(("caller", "path"), SERIAL_LISTINGS)
async def test_cursors_this_api_never_produced_are_400(world: World, caller: str, path: str, after: str) -> None:
    assert await invalid(world, caller, path, {"after": after}) == "after"


@pytest.mark.parametrize(("path", "after"), [
    ("/admin/orgs", "abc"), ("/admin/orgs", f"usr_{A[4:]}"), ("/admin/orgs", "org_bad id"),
    ("/admin/users", "org_lane_a"), ("/admin/users", "usr_" + "x" * 65), ("/admin/keys", "usr_member_a"),
    ("/admin/keys", ""),
])
async def test_id_cursors_must_be_ids_of_their_listing(world: World, path: str, after: str) -> None:
    assert await invalid(world, "operator", path, {"after": after}) == "after"


@pytest.mark.parametrize("limit", ["0", "501", "-1", "1.5", "", "ten", "\u00b2", "\u0661", "9" * 30, " 5"])
@pytest.mark.parametrize(("caller", "path"), [*SERIAL_LISTINGS, ("operator", "/admin/orgs"),
                                              ("operator", "/admin/users"), ("operator", "/admin/keys")])
async def test_limits_outside_1_to_500_are_400(world: World, caller: str, path: str, limit: str) -> None:
    assert await invalid(world, caller, path, {"limit": limit}) == "limit"


async def test_a_cursor_from_the_previous_page_pages_on(world: World) -> None:
    first = (await world.call("operator", "GET", f"/admin/orgs/{A}/ledger?limit=1")).json()
    rest = (await world.call("operator", "GET", f"/admin/orgs/{A}/ledger?limit=500&after={first['data'][0]['id']}"))
    assert rest.status_code == 200
    entries = first["data"] + rest.json()["data"]
    assert [e["kind"] for e in entries] == ["post", "hold", "grant"]
    ids = [int(e["id"]) for e in entries]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 3


@pytest.mark.parametrize(("caller", "path", "param"), [
    ("member_a", "/v1/requests/req%00a1", "request_id"),
    ("member_a", "/v1/requests/req-a1%0A", "request_id"),
    ("admin_a", "/v1/byok/keys/open%00ai/usage", "provider"),
    ("member_a", "/v1/usage?group_by=model%00", "group_by"),
    ("member_a", "/v1/usage?start=2026-01-01T00:00:00Z%00", "start"),
    ("member_a", "/v1/credits?x%00y=1", "x\u0000y"),
    ("member_a", "/v1/credits/history?after=1%00", "after"),
    ("operator", "/admin/orgs/org_lane_a%00", "org"),
    ("operator", f"/admin/orgs/{A}/members/usr_target_a%00", "user"),
    ("operator", "/admin/keys/key_target_a%00", "key"),
    ("operator", "/admin/users?email=a%00%40b.c", "email"),
    ("operator", "/admin/users?email=%7F", "email"),
    ("operator", f"/admin/audit?org_id={A}%00", "org_id"),
    ("admin_a", f"/admin/orgs/{A}/usage?user_id=usr_x%1B", "user_id"),
])
async def test_control_characters_in_paths_and_queries_are_400(world: World, caller: str, path: str,
                                                               param: str) -> None:
    method = "DELETE" if path.startswith("/admin/keys/") else "PUT" if "/members/" in path else "GET"
    response = await world.http.request(method, path, headers=headers(caller))
    assert response.headers["content-type"] == "application/json", response.text
    error = response.json()["error"]
    assert (response.status_code, error["code"], error["param"]) == (400, "invalid_value", param)


@pytest.mark.parametrize(("caller", "path"), [("stranger", "/v1/requests/a%00b"), ("nobody", "/admin/orgs/a%00"),
                                              ("stranger", "/admin/users?email=%00")])
async def test_strangers_hear_401_before_their_input_is_looked_at(world: World, caller: str, path: str) -> None:
    response = await world.http.get(path, headers=headers(caller))
    assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_api_key")


async def test_a_model_id_with_a_nul_is_an_unknown_model(world: World) -> None:
    """Model ids are matched in memory, never in a store: OpenAI's 404 for a model that is not there."""
    response = await world.call("member_a", "GET", "/v1/models/fake%00small")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "model_not_found")


async def test_a_request_id_that_was_never_issued_is_404_without_a_query(world: World) -> None:
    for rid in ("x" * 65, "a b", "ä"):
        response = await world.call("member_a", "GET", f"/v1/requests/{rid}")
        assert (response.status_code, response.json()["error"]["code"]) == (404, "request_not_found")
