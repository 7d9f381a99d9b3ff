"""Generated input on every admin and caller route (issue 7, item 6): whatever the path ids, query
values and bodies, through the real app on the real PostgreSQL, the answer is never a 5xx, always
application/json, and every error is the contract's shape with a status and type of its table.

The module works on its own copy of the world; the operator's generated calls may change it (create
orgs, suspend A, ...), which only widens what later examples meet.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .world import LONER, MEMBER_A, TARGET_A, TARGET_B, A, B, World, headers

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 409: "conflict_error", 410: "gone", 413: "invalid_request_error"}
CODES_400 = {"invalid_json", "missing_field", "invalid_value"}
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# what a hostile client types: control characters, other scripts' digits, huge and signed numbers,
# RFC 3339 at and past its edges, ids of every kind, and whatever hypothesis makes of text
EDGES = ["", " ", "\x00", "a\x00b", "\n", "\x7f", "\u0085", "\u00b2", "\u0661\u0660", "\uff19", "-1", "0", "1",
         "500", "501", "1e3", "9" * 40, "9223372036854775807", "9223372036854775808", "abc", "e5", "null", "[]",
         "0000-01-01T00:00:00Z", "99999-01-01T00:00:00Z", "2026-01-01T00:00:00+99:00", "0001-01-01T00:00:00+01:00",
         "9999-12-31T23:59:59-01:00", "2026-01-01T00:00:00Z", "2026-02-30T00:00:00Z", "model", "day", "user",
         "price_version", "pv_0000000000000000", "key_id", "end_user", "tag", "support", "a,b", "a b", "t" * 65,
         "=cmd", "customer-42", "u" * 257,
         "org", "%00", "../../etc", A, B, TARGET_A, TARGET_B, LONER, MEMBER_A, "usr_missing", "org_missing",
         "key_target_a", "key_missing", "req-a1", "openai", "x" * 300]


@st.composite
def times(draw: st.DrawFn) -> str:
    """RFC 3339 shapes at and past their edges: the first and last days datetime holds, year 0 and
    10000, leap days, the 24th hour and the 60th second, offsets of a day or more, odd separators."""
    year, month, day = draw(st.sampled_from([(1, 1, 1), (1, 12, 31), (9999, 12, 31), (9999, 1, 1), (2024, 2, 29),
                                             (2026, 2, 29), (0, 1, 1), (10000, 1, 1), (2026, 13, 1), (2026, 4, 31)])
                            | st.tuples(st.integers(0, 10000), st.integers(0, 13), st.integers(0, 32)))
    clock = draw(st.sampled_from(["00:00:00", "23:59:59", "24:00:00", "12:00:60", "12:60:00"]))
    frac = draw(st.sampled_from(["", ".5", ".999999", ".123456789", ".1234567890"]))
    offset = draw(st.sampled_from(["Z", "z", "", "+00:00", "+01:00", "-01:00", "+23:59", "-23:59", "+24:00",
                                   "-99:99", "+05:60", "+0100"]))
    sep = draw(st.sampled_from(["T", "t", " ", "_"]))
    return f"{year:04d}-{month:02d}-{day:02d}{sep}{clock}{frac}{offset}"


values = st.one_of(st.sampled_from(EDGES), times(), st.text(max_size=40),
                   st.integers(min_value=-(2**70), max_value=2**70).map(str))

CALLERS = st.sampled_from(["operator", "operator", "admin_a", "admin_b", "member_a", "stranger"])
PAGE, WINDOW = ["limit", "after"], ["start", "end", "group_by"]
ATTRIBUTION = ["end_user", "tag"]  # the usage routes' filters, and their CSV downloads'
# (method, path template, the query parameters it reads); {id} is filled with generated text, percent-encoded
GET_ROUTES = [
    ("GET", "/admin/orgs", PAGE), ("GET", "/admin/orgs/{id}", []), ("GET", f"/admin/orgs/{A}", []),
    ("GET", "/admin/orgs/{id}/usage", [*WINDOW, "user_id", *ATTRIBUTION]),
    ("GET", f"/admin/orgs/{A}/usage", [*WINDOW, "user_id", *ATTRIBUTION]),
    ("GET", "/admin/orgs/{id}/usage.csv", [*WINDOW, "user_id", *ATTRIBUTION]),
    ("GET", f"/admin/orgs/{A}/usage.csv", [*WINDOW, "user_id", *ATTRIBUTION]),
    ("GET", f"/admin/orgs/{A}/ledger", [*PAGE, "user_id"]), ("GET", "/admin/orgs/{id}/ledger", [*PAGE, "user_id"]),
    ("GET", f"/admin/orgs/{A}/audit", PAGE), ("GET", "/admin/audit", [*PAGE, "org_id"]),
    ("GET", "/admin/users", [*PAGE, "email"]), ("GET", "/admin/keys", [*PAGE, "user_id", "org_id"]),
    ("DELETE", "/admin/keys/{id}", []), ("DELETE", "/admin/orgs/{id}/members/{id}", []),
    ("GET", "/admin/orgs/{id}/members/{id}", []), ("GET", f"/admin/orgs/{A}/members/{{id}}", []),
    ("GET", f"/admin/orgs/{A}/members/{TARGET_A}", []),
    ("GET", "/v1/credits", []), ("GET", "/v1/credits/history", PAGE), ("GET", "/api/v1/llm/credits/history", PAGE),
    ("GET", "/v1/usage", [*WINDOW, *ATTRIBUTION]), ("GET", "/api/v1/llm/usage", [*WINDOW, *ATTRIBUTION]),
    ("GET", "/v1/usage.csv", [*WINDOW, *ATTRIBUTION]), ("GET", "/api/v1/llm/usage.csv", [*WINDOW, *ATTRIBUTION]),
    ("GET", "/v1/requests/{id}", []),
    ("GET", "/v1/models", []), ("GET", "/v1/models/{id}", []), ("GET", "/v1/models/categorized", []),
    ("GET", "/v1/byok/keys", []), ("GET", "/v1/byok/keys/{id}/usage", ["scope"]),
    ("GET", "/v1/byok/keys/openai/usage", ["scope"]), ("DELETE", "/v1/byok/keys/{id}", ["scope"]),
    ("POST", "/v1/byok/keys/{id}/test", ["scope"]), ("POST", "/v1/credits/purchase", []),
    ("GET", "/admin/price-versions", PAGE), ("GET", "/admin/price-versions/{id}", []),
    ("GET", f"/admin/orgs/{A}/alerts", PAGE), ("GET", "/admin/orgs/{id}/alerts", PAGE),
    ("GET", "/admin/orgs/{id}/alert-thresholds", []), ("GET", "/admin/export/dead-letters", PAGE),
    ("POST", "/admin/export/dead-letters/{id}/retry", []),
]
# a value each body field accepts, so that one bad field meets otherwise good ones
GOOD = {"name": "Acme", "tier": "free", "suspended": False, "amount_millicredits": 5, "reason": "fuzz",
        "idempotency_key": "fuzz-1", "expires_at": "2999-01-01T00:00:00Z", "email": "fuzz@lanes.test",
        "role": "member", "allocation_millicredits": 10, "allocation_period": "day", "default": False,
        "power_level": "eco", "user_id": TARGET_A, "org_id": A, "provider": "openai",
        "api_key": "sk-fuzz-provider-key-0001", "scope": "user", "enabled": True, "pool": [50, 80],
        "allocation": [90], "models": ["fake-small"], "routes": ["/v1/chat/completions"], "read_only": False,
        "limit_millicredits": 1000, "limit_period": "month"}
# (method, path, the fields the route reads): bodies mix these with junk
BODY_ROUTES = [
    ("POST", "/admin/orgs", ["name", "tier"]),
    ("PATCH", f"/admin/orgs/{A}", ["tier", "suspended"]),
    ("PATCH", "/admin/orgs/{id}", ["tier", "suspended"]),
    ("POST", f"/admin/orgs/{A}/grants", ["amount_millicredits", "reason", "idempotency_key", "expires_at"]),
    ("POST", f"/admin/orgs/{B}/adjustments", ["amount_millicredits", "reason", "idempotency_key"]),
    ("POST", "/admin/users", ["email", "name"]),
    ("PUT", f"/admin/orgs/{A}/members/{TARGET_A}",
     ["role", "allocation_millicredits", "allocation_period", "default", "power_level", "suspended"]),
    ("PUT", "/admin/orgs/{id}/members/{id}", ["role", "default", "suspended"]),
    ("POST", "/admin/keys", ["user_id", "org_id", "name", "models", "routes", "read_only", "limit_millicredits",
                             "limit_period"]),
    ("PATCH", "/admin/keys/{id}", ["name", "models", "routes", "read_only", "limit_millicredits", "limit_period"]),
    ("POST", "/v1/byok/keys", ["provider", "api_key", "scope"]),
    ("POST", "/v1/byok/keys/openai/toggle", ["enabled"]),
    ("POST", "/v1/byok/keys/{id}/toggle", ["enabled"]),
    ("PUT", f"/admin/orgs/{A}/alert-thresholds", ["pool", "allocation"]),
    ("PUT", "/admin/orgs/{id}/alert-thresholds", ["pool", "allocation"]),
]
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(EDGES), times(),
                        st.text(max_size=30))
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def deep(depth: int) -> bytes:
    return b'{"name": ' + b"[" * depth + b"]" * depth + b', "tier": "free"}'


@st.composite
def bodies(draw: st.DrawFn, fields: list[str]) -> bytes:
    kind = draw(st.sampled_from(["fields", "fields", "fields", "raw", "deep"]))
    if kind == "raw":
        return draw(st.binary(max_size=64) | st.sampled_from([b"", b"null", b"[]", b"{", b'"x"', b"\xff\xfe",
                                                              b'{"a": 1e999}', b'{"a": NaN}']))
    if kind == "deep":
        return deep(draw(st.integers(min_value=1, max_value=3000)))
    body: dict[str, Any] = {}
    for name in fields:
        choice = draw(st.sampled_from(["good", "good", "junk", "absent"]))
        if choice != "absent":
            body[name] = GOOD[name] if choice == "good" else draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(max_size=8))] = draw(json_values)
    return orjson.dumps(body)


def queries(names: list[str]) -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(st.sampled_from(names) if names else st.text(max_size=8), values, max_size=4)


def fill(template: str, draw_id: Any) -> str:
    while "{id}" in template:
        template = template.replace("{id}", quote(draw_id(), safe=""), 1)
    return template


def assert_contract(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code == 200 and response.url.path.endswith("/usage.csv"):  # a download: CSV, not JSON
        assert response.headers["content-type"] == "text/csv; charset=utf-8", response.text
        assert response.text.startswith("request_id,recorded_at,"), response.text
        return
    assert response.headers["content-type"] == "application/json", response.text
    body = response.json()
    if response.status_code < 400:
        return
    assert list(body) == ["error"], body
    error = body["error"]
    assert list(error) == ["message", "type", "param", "code"], error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["param"], str | None) and isinstance(error["code"], str)
    assert error["type"] == TYPES[response.status_code], (response.status_code, error)
    if response.status_code == 400:
        assert error["code"] in CODES_400, error
    if response.status_code == 413:
        assert error["code"] == "body_too_large"


@FUZZ
@given(route=st.sampled_from(GET_ROUTES), caller=CALLERS, data=st.data())
async def test_paths_and_queries(shared_world: World, route: tuple[str, str, list[str]], caller: str,
                                 data: st.DataObject) -> None:
    method, template, names = route
    path = fill(template, lambda: data.draw(values))
    params = data.draw(queries(names))
    response = await shared_world.http.request(method, path, params=params, headers=headers(caller))
    assert_contract(response)


@FUZZ
@given(route=st.sampled_from(BODY_ROUTES), caller=CALLERS, params=st.dictionaries(st.text(max_size=8), values,
                                                                                max_size=2), data=st.data())
async def test_bodies(shared_world: World, route: tuple[str, str, list[str]], caller: str, params: dict[str, str],
                      data: st.DataObject) -> None:
    method, template, fields = route
    path = fill(template, lambda: data.draw(values))
    raw = data.draw(bodies(fields))
    response = await shared_world.http.request(method, path, params=params, content=raw, headers={
        **headers(caller), "content-type": "application/json"})
    assert_contract(response)


USAGE_ROUTES = [("operator", f"/admin/orgs/{A}/usage"), ("admin_a", f"/admin/orgs/{A}/usage"),
                ("member_a", "/v1/usage"), ("admin_b", "/api/v1/llm/usage"),
                ("operator", f"/admin/orgs/{A}/usage.csv"), ("admin_a", f"/admin/orgs/{A}/usage.csv"),
                ("member_a", "/v1/usage.csv"), ("admin_b", "/api/v1/llm/usage.csv")]
# what the attribution filters meet: good ones, and what the gateway refuses to record
FILTERS = st.none() | st.sampled_from(["support", "t" * 64, "t" * 65, "a,b", "a b", "=cmd", "caf\u00e9", "\x00",
                                       "u" * 256, "u" * 257, ""]) | st.text(max_size=80)


@FUZZ
@given(route=st.sampled_from(USAGE_ROUTES), start=st.none() | times(), end=st.none() | times(),
       group_by=st.sampled_from(["model", "day", "user", "price_version", "key_id", "end_user", "tag", "power_level"]),
       end_user=FILTERS, tag=FILTERS)
async def test_usage_windows(shared_world: World, route: tuple[str, str], start: str | None, end: str | None,
                             group_by: str, end_user: str | None, tag: str | None) -> None:
    caller, path = route
    given_ = {"group_by": group_by, "start": start, "end": end, "end_user": end_user, "tag": tag}
    params = {name: value for name, value in given_.items() if value is not None}
    assert_contract(await shared_world.http.get(path, params=params, headers=headers(caller)))


@FUZZ
@given(expires_at=times(), org=st.sampled_from([A, B]))
async def test_grant_expiry(shared_world: World, expires_at: str, org: str) -> None:
    body = {"amount_millicredits": 1, "reason": "fuzz", "idempotency_key": f"fuzz-{expires_at}",
            "expires_at": expires_at}
    assert_contract(await shared_world.call("operator", "POST", f"/admin/orgs/{org}/grants", body))


# values of a kind no body field takes: each is 400 invalid_value naming the field, whatever the field
WRONG_KINDS = [[], {}, [1, 2], {"a": [1]}, 1.5, "\x00"]
ALLOWED = {"/admin": "operator", "/v1/byok/keys": "member_a"}
LISTS = {"pool", "allocation"}  # fields that take a list (of percents): a list of lists is their wrong kind


@pytest.mark.parametrize("wrong", WRONG_KINDS, ids=repr)
@pytest.mark.parametrize(("method", "path", "field"), [
    (method, path, field) for method, path, fields in BODY_ROUTES if "{id}" not in path for field in fields])
async def test_every_body_field_refuses_every_wrong_kind(shared_world: World, method: str, path: str, field: str,
                                                         wrong: Any) -> None:
    caller = next(who for prefix, who in ALLOWED.items() if path.startswith(prefix))
    fields = next(f for m, p, f in BODY_ROUTES if (m, p) == (method, path))
    if field in LISTS and isinstance(wrong, list):
        wrong = [wrong]
    body = {name: GOOD[name] for name in fields} | {field: wrong}
    response = await shared_world.call(caller, method, path, body)
    assert_contract(response)
    assert (response.status_code, response.json()["error"]["code"], response.json()["error"]["param"]) == (
        400, "invalid_value", field)


async def test_nesting_past_the_parsers_depth_is_invalid_json(shared_world: World) -> None:
    for path in ("/admin/orgs", "/v1/byok/keys"):
        caller = "operator" if path.startswith("/admin") else "member_a"
        response = await shared_world.http.post(path, content=deep(5000), headers=headers(caller))
        assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_json")
