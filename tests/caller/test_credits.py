"""GET /credits, /credits/history, /usage, /requests/{id}; POST /credits/purchase, under both prefixes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from .conftest import Caller, answer, error

PREFIXES = ["/v1", "/api/v1/llm"]
INVALID_KEY = error(401, "authentication_error", "invalid_api_key", "Invalid API key.")


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_credits_is_the_ledgers_body_for_the_caller(caller: Caller, prefix: str) -> None:
    assert answer(await caller.get(f"{prefix}/credits", "bob")) == (200, {
        "org_id": "org_a", "pool": {"balance": 1000, "held": 10, "available": 990},
        "allocation": {"limit": None, "used": 5, "held": 10, "available": None, "period": "none",
                       "resets_at": None},
    })
    assert caller.ledger.calls == [("credits", ("org_a", "usr_bob"))]


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/credits"), ("GET", "/v1/credits/history"), ("GET", "/v1/usage"), ("GET", "/v1/requests/r1"),
    ("POST", "/v1/credits/purchase"), ("GET", "/api/v1/llm/credits"),
])
async def test_every_route_needs_a_valid_key(caller: Caller, method: str, path: str) -> None:
    response = await caller.http.request(method, path, headers={"Authorization": "Bearer nobody"})
    assert answer(response) == INVALID_KEY
    assert caller.ledger.calls == []


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_purchase_is_gone(caller: Caller, prefix: str) -> None:
    response = await caller.post(f"{prefix}/credits/purchase", json={"amount": 100})
    assert answer(response) == error(
        410, "gone", "purchases_disabled",
        "Individual credit purchases are disabled; contact your organization admin to allocate credits.",
    )
    assert caller.ledger.calls == []


async def test_history_pages_through_the_callers_entries(caller: Caller) -> None:
    caller.ledger.entries_rows = [
        {"id": str(i), "user_id": "usr_alice" if i % 2 else "usr_bob", "amount": -i} for i in range(7, 0, -1)
    ]
    first = await caller.get("/v1/credits/history?limit=2")
    assert answer(first) == (200, {"data": [{"id": "7", "user_id": "usr_alice", "amount": -7},
                                            {"id": "5", "user_id": "usr_alice", "amount": -5}], "has_more": True})
    rest = await caller.get("/api/v1/llm/credits/history?limit=2&after=5")
    assert answer(rest) == (200, {"data": [{"id": "3", "user_id": "usr_alice", "amount": -3},
                                           {"id": "1", "user_id": "usr_alice", "amount": -1}], "has_more": False})
    default = await caller.get("/v1/credits/history", "bob")
    assert [row["id"] for row in default.json()["data"]] == ["6", "4", "2"]
    assert caller.ledger.calls == [
        ("entries", ("org_a", "usr_alice", 2, None)),
        ("entries", ("org_a", "usr_alice", 2, "5")),
        ("entries", ("org_a", "usr_bob", 50, None)),
    ]


LIMIT_ERROR = error(400, "invalid_request_error", "invalid_value", "'limit' must be an integer from 1 to 500.", "limit")


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=-1", "limit=ten", "limit=1.5", "limit="])
async def test_history_rejects_bad_limits(caller: Caller, query: str) -> None:
    assert answer(await caller.get(f"/v1/credits/history?{query}")) == LIMIT_ERROR
    assert caller.ledger.calls == []


async def test_history_rejects_an_empty_cursor(caller: Caller) -> None:
    assert answer(await caller.get("/v1/credits/history?after=")) == error(
        400, "invalid_request_error", "invalid_value", "'after' must be a cursor from a previous page.", "after")


async def test_usage_groups_by_model_by_default_for_the_caller_only(caller: Caller) -> None:
    response = await caller.get("/v1/usage", "root")
    assert answer(response) == (200, {"data": [{
        "model": "fake-small", "requests": 2, "prompt_tokens": 30, "completion_tokens": 12,
        "charged_millicredits": 7, "list_price_millicredits": 5}], "has_more": False})
    assert caller.ledger.calls == [("usage", ("org_a", "model", "usr_root", None, None, None, None, 1000))]


async def test_usage_by_day_between_rfc3339_times_in_utc(caller: Caller) -> None:
    query = {"group_by": "day", "start": "2026-01-01T00:00:00Z", "end": "2026-01-31T23:30:00.5-02:00"}
    response = await caller.get("/api/v1/llm/usage", params=query)
    assert response.status_code == 200
    assert response.json()["data"][0]["day"] == "fake-small"
    assert caller.ledger.calls == [("usage", (
        "org_a", "day", "usr_alice", datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 2, 1, 1, 30, 0, 500000, tzinfo=UTC), None, None, 1000,
    ))]


async def test_usage_by_end_user_or_tag_with_filters(caller: Caller) -> None:
    caller.ledger.usage_rows = [{"group": None, "requests": 1, "prompt_tokens": 3, "completion_tokens": 1,
                                 "charged_millicredits": 2, "list_price_millicredits": 1}]
    query = {"group_by": "tag", "end_user": "customer 42", "tag": "team-a"}
    assert answer(await caller.get("/v1/usage", params=query)) == (200, {"data": [{
        "tag": None, "requests": 1, "prompt_tokens": 3, "completion_tokens": 1, "charged_millicredits": 2,
        "list_price_millicredits": 1}], "has_more": False})
    assert caller.ledger.calls == [("usage", ("org_a", "tag", "usr_alice", None, None, "customer 42", "team-a",
                                              1000))]


async def test_usage_answers_at_most_1000_groups_and_says_there_are_more(caller: Caller) -> None:
    caller.ledger.usage_rows = [{"group": f"u{i:04d}", "requests": 1, "prompt_tokens": 1, "completion_tokens": 1,
                                 "charged_millicredits": 1, "list_price_millicredits": 1} for i in range(1002)]
    body = (await caller.get("/v1/usage?group_by=end_user")).json()
    assert (len(body["data"]), body["data"][-1]["end_user"], body["has_more"]) == (1000, "u0999", True)
    caller.ledger.usage_rows = caller.ledger.usage_rows[:1000]
    body = (await caller.get("/v1/usage?group_by=end_user")).json()
    assert (len(body["data"]), body["has_more"]) == (1000, False)


TIME_MESSAGE = "'{0}' must be an RFC 3339 timestamp, e.g. 2026-01-31T00:00:00Z."


@pytest.mark.parametrize(("query", "expected"), [
    ("group_by=user", error(400, "invalid_request_error", "invalid_value",
                            "'group_by' must be one of 'model', 'day', 'end_user', 'tag', 'power_level'.", "group_by")),
    ("group_by=", error(400, "invalid_request_error", "invalid_value",
                        "'group_by' must be one of 'model', 'day', 'end_user', 'tag', 'power_level'.", "group_by")),
    ("start=2026-01-01", error(400, "invalid_request_error", "invalid_value", TIME_MESSAGE.format("start"),
                               "start")),
    ("end=2026-01-01T00:00:00", error(400, "invalid_request_error", "invalid_value", TIME_MESSAGE.format("end"),
                                      "end")),
    ("start=yesterday", error(400, "invalid_request_error", "invalid_value", TIME_MESSAGE.format("start"),
                              "start")),
    ("start=2026-02-30T00:00:00Z", error(400, "invalid_request_error", "invalid_value",
                                         "'start' is not a valid date and time.", "start")),
    # the window is [start, end): empty or reversed is refused the same way here and on the admin route
    ("start=2026-02-02T00:00:00Z&end=2026-02-01T00:00:00Z", error(
        400, "invalid_request_error", "invalid_value", "'end' must be after 'start'.", "end")),
    ("start=2026-02-02T00:00:00Z&end=2026-02-02T00:00:00Z", error(
        400, "invalid_request_error", "invalid_value", "'end' must be after 'start'.", "end")),
    ("tag=a,b", error(400, "invalid_request_error", "invalid_value",
                      "'tag' must be 1 to 64 of the characters A-Z a-z 0-9 . _ : -.", "tag")),
    ("tag=" + "t" * 65, error(400, "invalid_request_error", "invalid_value",
                              "'tag' must be 1 to 64 of the characters A-Z a-z 0-9 . _ : -.", "tag")),
    ("tag=", error(400, "invalid_request_error", "invalid_value",
                   "'tag' must be 1 to 64 of the characters A-Z a-z 0-9 . _ : -.", "tag")),
    ("end_user=", error(400, "invalid_request_error", "invalid_value", "'end_user' must be 1 to 256 characters.",
                        "end_user")),
    ("end_user=" + "u" * 257, error(400, "invalid_request_error", "invalid_value",
                                    "'end_user' must be 1 to 256 characters.", "end_user")),
    ("end_user=a%00b", error(400, "invalid_request_error", "invalid_value",
                             "'end_user' must not contain control characters.", "end_user")),
])
async def test_usage_rejects_bad_input(caller: Caller, query: str, expected: object) -> None:
    assert answer(await caller.get(f"/v1/usage?{query}")) == expected
    assert caller.ledger.calls == []


RECORD = {
    "request_id": "r1", "status": "settled", "model": "fake-small", "prompt_tokens": 11, "completion_tokens": 6,
    "held_millicredits": 90, "charged_millicredits": 4, "list_price_millicredits": 2, "usage_source": "provider",
    "byok": False, "price_version": "pv_0123456789abcdef",
}


def not_found(request_id: str) -> object:
    return error(404, "not_found_error", "request_not_found", f"No request '{request_id}' found.")


async def test_a_member_sees_their_own_request_without_internal_fields(caller: Caller) -> None:
    caller.ledger.requests[("org_a", "r1")] = {**RECORD, "user_id": "usr_alice", "org_id": "org_a"}
    for prefix in PREFIXES:
        assert answer(await caller.get(f"{prefix}/requests/r1")) == (200, RECORD)


async def test_another_member_gets_404_and_the_org_admin_sees_it(caller: Caller) -> None:
    caller.ledger.requests[("org_a", "r1")] = {**RECORD, "user_id": "usr_alice"}
    assert answer(await caller.get("/v1/requests/r1", "bob")) == not_found("r1")
    assert answer(await caller.get("/v1/requests/r1", "root")) == (200, RECORD)
    # an admin of another org looks in their own org only
    assert answer(await caller.get("/v1/requests/r1", "carol")) == not_found("r1")
    assert ("request", ("org_b", "r1")) in caller.ledger.calls


async def test_unknown_and_overlong_request_ids_are_404(caller: Caller) -> None:
    assert answer(await caller.get("/v1/requests/nope")) == not_found("nope")
    long_id = "x" * 65
    assert answer(await caller.get(f"/v1/requests/{long_id}")) == not_found("x" * 64)
    assert caller.ledger.calls == [("request", ("org_a", "nope"))]
