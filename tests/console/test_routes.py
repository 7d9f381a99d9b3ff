"""The console's routes in the real app over the real stores: signing in and out, sessions, headers on
every page, refusals as pages, CSRF and origin checks, the style sheet, and no secret in any answer."""

from __future__ import annotations

import re

from proxy.console.html import HEADERS
from tests.admin.world import KEYS, TOKEN, A, B

from .conftest import BASE, ORIGIN, ConsoleWorld

PAGES = ["/console", f"/console/orgs/{A}", f"/console/orgs/{A}/usage", f"/console/orgs/{A}/requests",
         f"/console/orgs/{A}/requests/req-a1", f"/console/orgs/{A}/ledger", f"/console/orgs/{A}/keys"]


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


async def test_sign_in_sets_a_strict_cookie_and_every_page_answers_html_with_the_headers(
        shared_console: ConsoleWorld) -> None:
    async with shared_console.client() as http:
        answer = await http.post("/console/login", data={"credential": TOKEN}, headers=ORIGIN)
        assert (answer.status_code, answer.headers["location"]) == (303, "/console")
        cookie = answer.headers["set-cookie"]
        assert re.fullmatch(r"cg_console=[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+; Path=/console; Max-Age=28800; HttpOnly; "
                            r"SameSite=Strict", cookie), cookie
        assert TOKEN not in cookie
        for path in [*PAGES, "/console/onboard"]:
            page = await http.get(path)
            assert page.status_code == 200, (path, page.text)
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert {k: page.headers[k] for k in HEADERS} == HEADERS
            assert TOKEN not in page.text and "<script" not in page.text and " style=" not in page.text
    async with shared_console.client() as http:  # https: the cookie is Secure too
        answer = await http.post("https://gw.test/console/login", data={"credential": TOKEN},
                                 headers={"origin": "https://gw.test"})
        assert answer.headers["set-cookie"].endswith("; HttpOnly; SameSite=Strict; Secure")


async def test_an_org_admin_sees_only_their_org(shared_console: ConsoleWorld) -> None:
    async with shared_console.signed_in("admin_a") as http:
        home = await http.get("/console")
        assert f"/console/orgs/{A}" in home.text and B not in home.text
        for path in PAGES:
            page = await http.get(path)
            assert page.status_code == 200, (path, page.text)
            assert KEYS["admin_a"] not in page.text
        for path in PAGES[1:]:
            other = await http.get(path.replace(A, B))
            assert other.status_code == 403, path
            assert 'data-code="not_a_member"' in other.text and other.headers["cache-control"] == "no-store"
        assert (await http.get("/console/orgs/org_missing")).status_code == 403  # the same answer as another org's
        assert 'data-code="operator_only"' in (await http.get("/console/onboard")).text


async def test_who_may_sign_in(shared_console: ConsoleWorld) -> None:
    async with shared_console.client() as http:
        for credential, status, code in [(KEYS["member_a"], 403, "admin_required"), ("sk-cg-unknown", 401,
                                         "invalid_api_key"), ("", 401, "invalid_api_key"),
                                         ("x" * 600, 401, "invalid_api_key")]:
            answer = await http.post("/console/login", data={"credential": credential}, headers=ORIGIN)
            assert answer.status_code == status and f'data-code="{code}"' in answer.text, credential
            assert "set-cookie" not in answer.headers and (credential == "" or credential not in answer.text)
        refused = await http.post("/console/login", data={"credential": TOKEN}, headers={"origin": "http://evil.test"})
        assert refused.status_code == 403 and "set-cookie" not in refused.headers


async def test_without_a_session_pages_redirect_and_posts_are_401(shared_console: ConsoleWorld) -> None:
    async with shared_console.client() as http:
        for path in [*PAGES, "/console/onboard"]:
            answer = await http.get(path)
            assert (answer.status_code, answer.headers["location"]) == (303, "/console/login"), path
        http.cookies.set("cg_console", "forged.value", domain="gw.test", path="/console")
        assert (await http.get("/console")).status_code == 303
        for path in ("/console/logout", "/console/onboard"):
            answer = await http.post(path, data={"csrf": "x"}, headers=ORIGIN)
            assert answer.status_code == 401 and 'data-code="not_signed_in"' in answer.text
        login = await http.get("/console/login")
        assert login.status_code == 200 and 'type="password" name="credential"' in login.text


async def test_signing_out_refuses_every_copy_of_the_cookie(console: ConsoleWorld) -> None:
    """The cookie a browser held before signing out (copied, or left in another tab) is refused afterwards
    by the server, on every page and form; another session of the same key is not."""
    for caller in ("operator", "admin_a"):
        async with console.signed_in(caller) as http, console.signed_in(caller) as other:
            copy = http.cookies["cg_console"]
            token = csrf((await http.get("/console")).text)
            out = await http.post("/console/logout", data={"csrf": token}, headers=ORIGIN)
            assert (out.status_code, out.headers["location"]) == (303, "/console/login")
            async with console.client() as thief:
                thief.cookies.set("cg_console", copy, domain="gw.test", path="/console")
                answer = await thief.get("/console")
                assert (answer.status_code, answer.headers["location"]) == (303, "/console/login"), caller
                again = await thief.post("/console/logout", data={"csrf": token}, headers=ORIGIN)
                assert again.status_code == 401 and 'data-code="not_signed_in"' in again.text
            assert (await other.get("/console")).status_code == 200
    async with console.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM creditgate.console_signouts") == 2


async def test_posts_need_the_sessions_csrf_token_and_this_origin(shared_console: ConsoleWorld) -> None:
    async with shared_console.signed_in("operator") as http:
        token = csrf((await http.get("/console")).text)
        for data, headers in [({}, ORIGIN), ({"csrf": "forged"}, ORIGIN), ({"csrf": token}, {}),
                              ({"csrf": token}, {"origin": "http://evil.test"}),
                              ({"csrf": token}, {"origin": BASE, "sec-fetch-site": "cross-site"})]:
            for path in ("/console/logout", "/console/onboard"):
                answer = await http.post(path, data={**data, "org_name": "x"}, headers=headers)
                assert answer.status_code == 403, (path, data, headers)
        assert (await http.get("/console")).status_code == 200  # still signed in
        out = await http.post("/console/logout", data={"csrf": token}, headers=ORIGIN)
        assert (out.status_code, out.headers["location"]) == (303, "/console/login")
        assert out.headers["set-cookie"] == "cg_console=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict"
        assert (await http.get("/console")).status_code == 303


async def test_a_revoked_key_ends_its_session(console: ConsoleWorld) -> None:
    async with console.signed_in("admin_a") as http:
        assert (await http.get(f"/console/orgs/{A}")).status_code == 200
        async with console.client() as api:
            revoked = await api.delete("/admin/keys/key_admin_a", headers={"authorization": f"Bearer {TOKEN}"})
            assert revoked.status_code == 200
        answer = await http.get(f"/console/orgs/{A}")
        assert (answer.status_code, answer.headers["location"]) == (303, "/console/login")


async def test_the_style_sheet(shared_console: ConsoleWorld) -> None:
    async with shared_console.client() as http:
        css = await http.get("/console/static/console.css")
        assert css.status_code == 200 and css.headers["content-type"] == "text/css; charset=utf-8"
        assert css.headers["x-content-type-options"] == "nosniff" and css.text.startswith("/* creditgate console")
        for path in ("/console/static/other.js", "/console/", "/console/nothing/here"):
            missing = await http.get(path)
            assert missing.status_code == 404 and 'data-code="page_not_found"' in missing.text, path
        posted = await http.post("/console/static/console.css")
        assert (posted.status_code, posted.headers["allow"]) == (405, "GET, HEAD")
        assert posted.headers["content-type"] == "text/html; charset=utf-8"


async def test_bad_input_is_a_4xx_page(shared_console: ConsoleWorld) -> None:
    async with shared_console.signed_in("operator") as http:
        for path, params, status in [(f"/console/orgs/{A}/ledger", {"limit": "0"}, 400),
                                     (f"/console/orgs/{A}/ledger", {"after": "abc"}, 400),
                                     (f"/console/orgs/{A}/ledger", {"user_id": "nope"}, 400),
                                     (f"/console/orgs/{A}/requests", {"after": "-1"}, 400),
                                     (f"/console/orgs/{A}/keys", {"after": "org_x"}, 400),
                                     (f"/console/orgs/{A}/usage", {"days": "8"}, 400),
                                     (f"/console/orgs/{A}", {"x": "\x00"}, 400),
                                     ("/console/orgs/not-an-org", {}, 400),
                                     ("/console", {"after": "usr_x"}, 400),
                                     (f"/console/orgs/{A}/requests/nope", {}, 404),
                                     ("/console/orgs/org_missing", {}, 404)]:
            answer = await http.get(path, params=params)
            assert answer.status_code == status, (path, params, answer.text)
            assert answer.headers["content-type"] == "text/html; charset=utf-8" and 'id="error"' in answer.text


async def test_a_database_outage_is_a_503_page(console: ConsoleWorld) -> None:
    async with console.signed_in("operator") as http:
        await console.pool.close()
        answer = await http.get(f"/console/orgs/{A}")
    assert answer.status_code == 503 and 'data-code="ledger_unavailable"' in answer.text



async def test_other_methods_are_html_405_or_404_pages(shared_console: ConsoleWorld) -> None:
    async with shared_console.signed_in("operator") as http:
        for method, path, status, allow in (
                ("DELETE", "/console", 405, "GET, HEAD"), ("PUT", "/console/login", 405, "GET, HEAD, POST"),
                ("POST", f"/console/orgs/{A}", 405, "GET, HEAD"), ("PATCH", f"/console/orgs/{A}/keys/key_x", 405,
                                                                   "GET, HEAD, POST"),
                ("GET", f"/console/orgs/{A}/keys/key_x/revoke", 405, "POST"), ("BREW", f"/console/orgs/{A}/usage", 405,
                                                                             "GET, HEAD"),
                ("OPTIONS", "/console/nowhere", 404, None), ("DELETE", "/console/nowhere/at/all", 404, None)):
            answer = await http.request(method, path)
            assert answer.status_code == status, (method, path, answer.text)
            assert answer.headers["content-type"] == "text/html; charset=utf-8"
            assert {k: answer.headers[k] for k in HEADERS} == HEADERS
            assert answer.headers.get("allow") == allow and 'id="error"' in answer.text
