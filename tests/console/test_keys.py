"""The keys page: the admin API's rows and usage, and its forms creating, changing and revoking keys in the
admin API's lanes (proxy/admin/people.py), validated by its body declarations, broadcast as it broadcasts."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import httpx

from proxy.ledger.types import HoldRequest
from tests.admin.world import ADMIN_A, ADMIN_B, KEYS, LONER, MEMBER_A, TARGET_A, TOKEN, A, B, hold, sha256, spent

from .conftest import ORIGIN, ConsoleWorld
from .test_activity import first_cells

OPERATOR = {"authorization": f"Bearer {TOKEN}"}
SCOPED = {"user_id": MEMBER_A, "name": "ci", "models": "fake-small", "routes": "/v1/chat/completions, /v1/credits/",
          "limit_credits": "5.25", "limit_period": "day"}


def csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


async def post(http: httpx.AsyncClient, path: str, form: dict[str, str], page: str | None = None) -> httpx.Response:
    """Posts `form` with the CSRF token of `page` (the create form: the keys page), and a create form's
    one-time token from that page."""
    html = (await http.get(page or path.removesuffix("/revoke"))).text
    once = re.search(r'name="once" value="([^"]+)"', html)
    extra = {"once": once.group(1)} if once and path.endswith("/keys") else {}
    return await http.post(path, data={**extra, **form, "csrf": csrf(html)}, headers=ORIGIN)


async def api_key(world: ConsoleWorld, key_id: str) -> dict[str, Any]:
    async with world.client() as http:
        found = (await http.get("/admin/keys", params={"org_id": A, "limit": "100"}, headers=OPERATOR)).json()
    return next(k for k in found["data"] if k["id"] == key_id)


def usage_cells(html: str, key_id: str) -> list[str]:
    """Limit, used, held, available: each cell's data-mc ("" for none)."""
    row = re.search(rf'<tr><td data-key="{key_id}">(.*?)</tr>', html)
    assert row is not None
    return re.findall(r'<td class="num"(?: data-mc="(-?\d+)")?>', row.group(1))


async def test_the_keys_page_equals_the_admin_api(console: ConsoleWorld) -> None:
    async with console.signed_in("operator") as http:
        made = await post(http, f"/console/orgs/{A}/keys", SCOPED)
        assert made.status_code == 201, made.text
        secret = re.search(r'<pre id="new-key">(sk-cg-[^<]+)</pre>', made.text)
        key_id = re.search(r'data-key="(key_[a-z0-9]+)"', made.text)
        assert secret is not None and key_id is not None and made.headers["cache-control"] == "no-store"
        assert secret.group(1) not in str(made.url)
        key = await api_key(console, key_id.group(1))
        assert (key["user_id"], key["org_id"], key["name"], key["models"], key["routes"], key["read_only"],
                key["limit_millicredits"], key["limit_period"]) == (
            MEMBER_A, A, "ci", ["fake-small"], ["/v1/chat/completions", "/v1/credits"], False, 5250, "day")
        await console.ledger.reserve(_held(key["id"]))
        await console.ledger.settle(A, "req-key-1", spent(400))
        await console.ledger.reserve(_held(key["id"], "req-key-2", 300))
        html = (await http.get(f"/console/orgs/{A}/keys")).text
        api = (await console.api("operator", "/admin/keys", org_id=A))["data"]
        assert first_cells(html, "keys") == [k["id"] for k in api]
        assert secret.group(1) not in html and all(k not in html for k in KEYS.values())
        for k in api:
            usage = k["usage"] or {}
            assert usage_cells(html, k["id"]) == ["" if v is None else str(v) for v in (
                k["limit_millicredits"], usage.get("used"), usage.get("held"), usage.get("available"))]
        assert usage_cells(html, key["id"]) == ["5250", "400", "300", "4550"]
        detail = (await http.get(f"/console/orgs/{A}/keys/{key['id']}")).text
        assert re.search(r'id="key-available" data-mc="4550"', detail) and 'value="5.250"' in detail
        one = (await http.get(f"/console/orgs/{A}/keys", params={"limit": "1"})).text
        assert len(first_cells(one, "keys")) == 1 and "Older →" in one


def _held(key_id: str, request_id: str = "req-key-1", amount: int = 900) -> HoldRequest:
    return replace(hold(A, MEMBER_A, request_id, amount), key_id=key_id)


async def test_an_org_admin_changes_and_revokes_a_key_broadcast_to_every_replica(console: ConsoleWorld) -> None:
    async with console.signed_in("admin_a") as http:
        base = f"/console/orgs/{A}/keys/key_target_a"
        changed = await post(http, base, {"name": "narrow", "routes": "/v1/credits", "read_only": "on",
                                          "limit_credits": "1.5", "limit_period": "week", "models": ""}, base)
        assert (changed.status_code, changed.headers["location"]) == (303, base)
        key = await api_key(console, "key_target_a")
        assert (key["name"], key["models"], key["routes"], key["read_only"], key["limit_millicredits"],
                key["limit_period"]) == ("narrow", None, ["/v1/credits"], True, 1500, "week")
        assert console.broadcasts == [sha256(KEYS["target_a"])]
        async with console.client() as api:  # the key's new scope applies: read-only, /v1/credits only
            refused = await api.get("/admin/keys", headers={"authorization": f"Bearer {KEYS['target_a']}"})
            assert refused.json()["error"]["code"] == "route_not_allowed"
        revoked = await post(http, f"{base}/revoke", {}, base)
        assert (revoked.status_code, revoked.headers["location"]) == (303, base)
        assert (await api_key(console, "key_target_a"))["revoked"] is True
        assert console.broadcasts == [sha256(KEYS["target_a"])] * 2
        page = (await http.get(base)).text
        assert 'id="key-revoked">' in page and 'id="revoke-key"' not in page
    audit = await console.pool.fetch("SELECT actor, action FROM creditgate.admin_audit WHERE target = 'key_target_a' "
                                     "ORDER BY id")
    assert [(r["actor"], r["action"]) for r in audit][-2:] == [(ADMIN_A, "key.update"), (ADMIN_A, "key.revoke")]


async def test_the_lanes_are_the_admin_apis(console: ConsoleWorld) -> None:
    async with console.client() as api:
        made = await api.put(f"/admin/orgs/{A}/members/{TARGET_A}", json={"role": "admin"}, headers=OPERATOR)
        assert made.status_code == 200
        unbound = (await api.post("/admin/keys", json={"user_id": ADMIN_A}, headers=OPERATOR)).json()["key"]
        read_only = (await api.post("/admin/keys", json={"user_id": ADMIN_A, "org_id": A, "read_only": True},
                                    headers=OPERATOR)).json()["key"]
    count = "SELECT count(*) FROM creditgate.api_keys"
    before = await console.pool.fetchval(count)
    async with console.signed_in("admin_a") as http:
        keys = f"/console/orgs/{A}/keys"
        assert f'value="{TARGET_A}"' not in (await http.get(keys)).text  # another admin: not offered
        for user, status, code in ((TARGET_A, 403, "operator_only"), (ADMIN_B, 404, "member_not_found"),
                                   (LONER, 404, "member_not_found"), ("usr_nobody", 404, "member_not_found")):
            answer = await post(http, keys, {"user_id": user})
            assert (answer.status_code, code in answer.text) == (status, True), (user, answer.text)
        for path in (f"/console/orgs/{A}/keys/key_admin_b", f"/console/orgs/{A}/keys/key_nobody"):
            assert (await http.get(path)).status_code == 403
            assert (await post(http, f"{path}/revoke", {})).status_code == 403
        assert (await post(http, f"/console/orgs/{B}/keys/key_admin_b/revoke", {})).status_code == 403
    async with console.signed_in("operator") as http:
        assert (await http.get(f"/console/orgs/{A}/keys/key_admin_b")).status_code == 404  # another org's key
        assert (await post(http, f"/console/orgs/{A}/keys", {"user_id": TARGET_A})).status_code == 201
    for credential, status, code in ((unbound, 403, "operator_only"), (read_only, 403, "read_only_key")):
        async with console.client() as http:
            signed = await http.post("/console/login", data={"credential": credential}, headers=ORIGIN)
            assert signed.status_code == 303
            assert (await http.get(f"/console/orgs/{A}/keys")).status_code == 200
            page = await http.get(f"/console/orgs/{A}/keys/key_member_a")
            assert page.status_code == 200 and ('id="revoke-key"' in page.text) is (credential == read_only)
            answer = await post(http, f"/console/orgs/{A}/keys/key_member_a/revoke", {})
            assert (answer.status_code, f'data-code="{code}"' in answer.text) == (status, True), answer.text
    assert await console.pool.fetchval(count) == before + 1
    assert (await api_key(console, "key_member_a"))["revoked"] is False and console.broadcasts == []


async def test_bad_input_redisplays_the_form_and_writes_nothing(console: ConsoleWorld) -> None:
    count = "SELECT count(*) FROM creditgate.api_keys"
    before = await console.pool.fetchval(count)
    async with console.signed_in("admin_a") as http:
        for change, param in (
                ({"models": "bad model!"}, "models"), ({"routes": "v1/chat"}, "routes"),
                ({"limit_credits": "1.0001"}, "limit_credits"), ({"limit_period": "year"}, "limit_period"),
                ({"name": "n" * 201}, "name"), ({"user_id": "org_x"}, "user_id"),
                ({"routes": ", ".join(f"/r{i}" for i in range(33))}, "routes")):
            answer = await post(http, f"/console/orgs/{A}/keys", {**SCOPED, **change})
            assert answer.status_code == 400 and param in answer.text and 'id="create-key"' in answer.text, change
        base = f"/console/orgs/{A}/keys/key_member_a"
        answer = await post(http, base, {"models": "bad model!"}, base)
        assert answer.status_code == 400 and 'value="bad model!"' in answer.text
    assert await console.pool.fetchval(count) == before
    assert (await api_key(console, "key_member_a"))["models"] is None and console.broadcasts == []


async def test_a_failed_broadcast_is_a_503_and_the_change_is_kept(console: ConsoleWorld) -> None:
    console.broadcast_fails = True
    async with console.signed_in("admin_a") as http:
        base = f"/console/orgs/{A}/keys/key_member_a"
        answer = await post(http, f"{base}/revoke", {}, base)
    assert answer.status_code == 503 and 'data-code="revocation_not_broadcast"' in answer.text
    assert (await api_key(console, "key_member_a"))["revoked"] is True


async def test_the_create_form_sent_again_creates_nothing(console: ConsoleWorld) -> None:
    count = "SELECT count(*) FROM creditgate.api_keys"
    before = await console.pool.fetchval(count)
    async with console.signed_in("admin_a") as http:
        page = (await http.get(f"/console/orgs/{A}/keys")).text
        form = {**SCOPED, "csrf": csrf(page), "once": re.findall(r'name="once" value="([^"]+)"', page)[0]}
        first = await http.post(f"/console/orgs/{A}/keys", data=form, headers=ORIGIN)
        again = await http.post(f"/console/orgs/{A}/keys", data=form, headers=ORIGIN)  # the browser's refresh
        assert (first.status_code, again.status_code) == (201, 200)
        secret = re.search(r'<pre id="new-key">(sk-cg-[^<]+)</pre>', first.text)
        key_id = re.search(r'data-key="(key_[a-z0-9]+)"', first.text)
        assert secret is not None and key_id is not None
        assert 'id="replayed"' in again.text and secret.group(1) not in again.text and "new-key" not in again.text
        assert f'data-key="{key_id.group(1)}"' in again.text
        for bad in ("", "short", "x" * 65):
            refused = await http.post(f"/console/orgs/{A}/keys", data={**form, "once": bad}, headers=ORIGIN)
            assert refused.status_code == 400 and 'id="create-key"' in refused.text
        other = await post(http, f"/console/orgs/{A}/keys", {**SCOPED, "once": "q" * 32})  # another token: made
        assert other.status_code == 201
    async with console.signed_in("operator") as http:  # the same token in another org shows nothing of A's
        page = (await http.get(f"/console/orgs/{B}/keys")).text
        elsewhere = await http.post(f"/console/orgs/{B}/keys", headers=ORIGIN, data={
            **SCOPED, "user_id": "usr_target_b", "csrf": csrf(page), "once": form["once"]})
        assert elsewhere.status_code == 200 and key_id.group(1) not in elsewhere.text
    assert await console.pool.fetchval(count) == before + 2


async def test_the_forms_need_the_csrf_token_and_this_origin(console: ConsoleWorld) -> None:
    async with console.signed_in("admin_a") as http:
        base = f"/console/orgs/{A}/keys/key_member_a"
        token = csrf((await http.get(base)).text)
        for path, form in ((f"{base}/revoke", {"other": "1"}), (base, {"name": "x"}),
                           (f"/console/orgs/{A}/keys", SCOPED),
                           (f"/console/orgs/{A}/alert-thresholds", {"pool": "1", "allocation": "1"})):
            for data, headers, code in (({**form}, ORIGIN, "csrf_failed"), ({**form, "csrf": "forged"}, ORIGIN,
                                                                             "csrf_failed"),
                                        ({**form, "csrf": token}, {"origin": "http://evil.test"}, "cross_origin"),
                                        ({**form, "csrf": token}, {}, "cross_origin")):
                answer = await http.post(path, data=data, headers=headers)
                assert (answer.status_code, f'data-code="{code}"' in answer.text) == (403, True), (path, code)
    assert (await api_key(console, "key_member_a"))["revoked"] is False and console.broadcasts == []
    assert await console.api("operator", f"/admin/orgs/{A}/alert-thresholds") == {
        "pool": [50, 80, 100], "allocation": [50, 80, 100]}
