"""Generated input on every console route (the pattern of tests/admin/test_fuzz.py): whatever the path
ids, query values, form fields and raw bodies, for the operator, an org admin of either org, and nobody,
through the real app on the real PostgreSQL, the answer is never a 5xx, and always an HTML page (or the
redirect to sign in) with the console's security headers.

The module works on its own copy of the world; the operator's generated onboardings may add orgs, and the
generated key forms add, change and revoke keys (never the signed-in admins' own).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.console.html import HEADERS
from tests.admin.test_fuzz import EDGES, times
from tests.admin.world import TARGET_A, A, B

from .conftest import ORIGIN, ConsoleWorld

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
values = st.one_of(st.sampled_from([*EDGES, "7", "30", "90", "req-a1"]), times(), st.text(max_size=40),
                   st.integers(min_value=-(2**70), max_value=2**70).map(str))
PAGE = ["limit", "after"]
GET_ROUTES = [
    ("/console", PAGE), ("/console/login", []), ("/console/onboard", []), ("/console/orgs/{id}", []),
    (f"/console/orgs/{A}", []), (f"/console/orgs/{B}", []), ("/console/orgs/{id}/usage", ["days"]),
    (f"/console/orgs/{A}/usage", ["days"]), (f"/console/orgs/{A}/requests", [*PAGE, "user_id"]),
    ("/console/orgs/{id}/requests", [*PAGE, "user_id"]), (f"/console/orgs/{A}/requests/{{id}}", []),
    ("/console/orgs/{id}/requests/{id}", []), (f"/console/orgs/{A}/ledger", [*PAGE, "user_id"]),
    ("/console/orgs/{id}/ledger", [*PAGE, "user_id"]), (f"/console/orgs/{A}/keys", PAGE),
    ("/console/orgs/{id}/keys", PAGE), (f"/console/orgs/{A}/keys/{{id}}", []), ("/console/orgs/{id}/keys/{id}", []),
    (f"/console/orgs/{A}/keys/key_target_a", []), (f"/console/orgs/{A}/alerts", PAGE),
    ("/console/orgs/{id}/alerts", PAGE),
]
KEY_FIELDS = ["name", "models", "routes", "read_only", "limit_credits", "limit_period"]
FIELDS = {"/console/login": ["credential"], "/console/logout": [],
          "/console/onboard": ["org_name", "tier", "grant_credits", "grant_expires", "email", "user_name", "role",
                               "allocation_credits", "period", "key_name", "once"],
          f"/console/orgs/{A}/alert-thresholds": ["pool", "allocation"],
          "/console/orgs/{id}/alert-thresholds": ["pool", "allocation"],
          f"/console/orgs/{A}/keys": ["user_id", "once", *KEY_FIELDS],
          "/console/orgs/{id}/keys": ["user_id", "once", *KEY_FIELDS],
          f"/console/orgs/{A}/keys/{{id}}": KEY_FIELDS, f"/console/orgs/{A}/keys/key_target_a": KEY_FIELDS,
          f"/console/orgs/{A}/keys/{{id}}/revoke": [], f"/console/orgs/{A}/keys/key_target_a/revoke": []}
GOOD = {"org_name": "Fuzz", "tier": "free", "grant_credits": "1.5", "grant_expires": "2999-01-01",
        "email": "fuzz@console.test", "user_name": "Fuzz", "role": "member", "allocation_credits": "2",
        "period": "day", "key_name": "k", "credential": "sk-cg-nobody", "once": "f" * 32, "pool": "50, 80",
        "allocation": "90", "user_id": TARGET_A, "name": "k", "models": "fake-small", "routes": "/v1/credits",
        "read_only": "on", "limit_credits": "1.5", "limit_period": "day"}
CALLERS = st.sampled_from(["operator", "operator", "admin_a", "admin_b", "nobody"])


async def session_of(world: ConsoleWorld, caller: str) -> tuple[str, str]:
    """A new session of `caller`: its cookie and CSRF token."""
    async with world.signed_in(caller) as http:
        page = (await http.get("/console")).text
        token = re.search(r'name="csrf" value="([^"]+)"', page)
        assert token is not None
        return http.cookies["cg_console"], token.group(1)


@pytest.fixture(scope="module")
async def sessions(shared_console: ConsoleWorld) -> AsyncIterator[dict[str, tuple[str, str]]]:
    """Each caller's session cookie and CSRF token (nobody: none)."""
    out = {"nobody": ("", "")}
    for caller in ("operator", "admin_a", "admin_b"):
        out[caller] = await session_of(shared_console, caller)
    yield out


def assert_page(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code == 303:
        # sign in, home, or the page a saved form returns to: always a path of ours, never the input's
        assert re.fullmatch(r"/console(/login|/orgs/org_lane_a/(alerts|keys/key_[a-z0-9_]+))?",
                            response.headers["location"]), response.headers["location"]
        return
    assert response.headers["content-type"] == "text/html; charset=utf-8", response.text
    assert {k: response.headers[k] for k in HEADERS} == HEADERS
    if response.status_code >= 400:
        assert 'id="error"' in response.text


def fill(template: str, draw_id: Any) -> str:
    while "{id}" in template:
        template = template.replace("{id}", quote(draw_id(), safe=""), 1)
    return template


@FUZZ
@given(route=st.sampled_from(GET_ROUTES), caller=CALLERS, data=st.data())
async def test_pages(shared_console: ConsoleWorld, sessions: dict[str, tuple[str, str]],
                     route: tuple[str, list[str]], caller: str, data: st.DataObject) -> None:
    template, names = route
    path = fill(template, lambda: data.draw(values))
    params = data.draw(st.dictionaries(st.sampled_from(names) if names else st.text(max_size=8), values, max_size=3))
    cookie, _ = sessions[caller]
    async with shared_console.client() as http:
        answer = await http.get(path, params=params, headers={"cookie": f"cg_console={cookie}"} if cookie else {})
    assert_page(answer)


@st.composite
def forms(draw: st.DrawFn, fields: list[str], csrf: str) -> bytes | dict[str, str]:
    kind = draw(st.sampled_from(["fields", "fields", "fields", "raw"]))
    if kind == "raw":
        return draw(st.binary(max_size=64) | st.sampled_from([b"", b"%", b"a=%FF", b"=", b"&&&", b"a=1&a=2"]))
    form = {"csrf": csrf} if draw(st.integers(0, 5)) else {}
    for name in fields:
        choice = draw(st.sampled_from(["good", "good", "junk", "absent"]))
        if choice != "absent":
            form[name] = GOOD[name] if choice == "good" else draw(values)
    return form


@FUZZ
@given(path=st.sampled_from(list(FIELDS)), caller=CALLERS, data=st.data(),
       origin=st.sampled_from([ORIGIN, ORIGIN, {}, {"origin": "http://evil.test"}, {"origin": "null"}]))
async def test_posts(shared_console: ConsoleWorld, sessions: dict[str, tuple[str, str]], path: str, caller: str,
                     data: st.DataObject, origin: dict[str, str]) -> None:
    cookie, csrf = sessions[caller]
    if path == "/console/logout" and cookie:  # signing out ends a session: never the one the other examples share
        cookie, csrf = await session_of(shared_console, caller)
    body = data.draw(forms(FIELDS[path], csrf))
    headers = {**origin, **({"cookie": f"cg_console={cookie}"} if cookie else {})}
    target = fill(path, lambda: data.draw(values))
    async with shared_console.client() as http:
        if isinstance(body, bytes):
            answer = await http.post(target, content=body, headers={
                **headers, "content-type": "application/x-www-form-urlencoded"})
        else:
            answer = await http.post(target, data=body, headers=headers)
    assert_page(answer)
    if path == "/console/logout" and answer.status_code == 303:  # signed out: the session is refused from now on
        assert answer.headers["location"] == "/console/login"
        async with shared_console.client() as http:
            assert (await http.get("/console", headers={"cookie": f"cg_console={cookie}"})).status_code == 303


@FUZZ
@given(route=st.sampled_from(GET_ROUTES + [(p, []) for p in FIELDS]), caller=CALLERS, data=st.data(),
       method=st.sampled_from(["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW", "GET", "POST"]))
async def test_other_methods(shared_console: ConsoleWorld, sessions: dict[str, tuple[str, str]],
                             route: tuple[str, list[str]], caller: str, data: st.DataObject, method: str) -> None:
    """Any method on any console path: an HTML page (405 with Allow, 404, or the route's own answer)."""
    cookie, _ = sessions[caller]
    async with shared_console.client() as http:
        answer = await http.request(method, fill(route[0], lambda: data.draw(values)), headers={
            **ORIGIN, **({"cookie": f"cg_console={cookie}"} if cookie else {})})
    assert_page(answer)
    if answer.status_code == 405:
        assert answer.headers["allow"] and method not in answer.headers["allow"].split(", ")
