"""The budget alerts page: the admin API's thresholds and fired alerts, and its form changing the thresholds
through PUT /admin/orgs/{org}/alert-thresholds's declaration and store, audited, in the admin API's lanes."""

from __future__ import annotations

import re

import httpx
import pytest

from proxy.console.alerts import percents
from proxy.errors import ProxyError
from tests.admin.world import ADMIN_A, MEMBER_A, TOKEN, A, hold

from .conftest import ORIGIN, ConsoleWorld
from .test_activity import first_cells

OPERATOR = {"authorization": f"Bearer {TOKEN}"}


def test_percents() -> None:
    assert percents({"p": " 50, 80 100 ,"}, "p") == [50, 80, 100]
    assert percents({"p": ""}, "p") == [] and percents({}, "p") == [] and percents({"p": " , "}, "p") == []
    for bad in ("50;80", "5O", "-5", "1.5", "50,,x", "1234567"):
        with pytest.raises(ProxyError) as caught:
            percents({"p": bad}, "p")
        assert (caught.value.code, caught.value.param) == ("invalid_value", "p"), bad


async def post(http: httpx.AsyncClient, path: str, form: dict[str, str]) -> httpx.Response:
    page = (await http.get(f"/console/orgs/{A}/alerts")).text
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token is not None
    return await http.post(path, data={**form, "csrf": token.group(1)}, headers=ORIGIN)


async def test_thresholds_and_alerts_equal_the_admin_api(console: ConsoleWorld) -> None:
    form = f"/console/orgs/{A}/alert-thresholds"
    async with console.signed_in("admin_a") as http:
        html = (await http.get(f"/console/orgs/{A}/alerts")).text
        assert 'id="thresholds-pool">50, 80, 100<' in html and 'id="alerts"' in html and "No alerts fired" in html
        saved = await post(http, form, {"pool": "5, 1, 5", "allocation": ""})
        assert (saved.status_code, saved.headers["location"]) == (303, f"/console/orgs/{A}/alerts")
        assert await console.api("admin_a", f"/admin/orgs/{A}/alert-thresholds") == {"pool": [1, 5], "allocation": []}
        for request_id, amount in (("req-alert-1", 20_000), ("req-alert-2", 40_000)):  # 2.07% then 6.07% of 1,000,000
            await console.ledger.reserve(hold(A, MEMBER_A, request_id, amount))
        html = (await http.get(f"/console/orgs/{A}/alerts")).text
        assert 'id="thresholds-pool">1, 5<' in html and 'id="thresholds-allocation">off<' in html
        assert 'name="pool" id="f-pool" value="1, 5"' in html
        api = (await console.api("admin_a", f"/admin/orgs/{A}/alerts"))["data"]
        assert [(a["scope"], a["threshold"]) for a in api] == [("pool", 5), ("pool", 1)]
        assert first_cells(html, "alerts") == [a["id"] for a in api]
        for a in api:
            row = re.search(rf'<tr><td>{a["id"]}</td>(.*?)</tr>', html)
            assert row is not None
            assert re.findall(r'data-(?:mc|n)="(\d+)"', row.group(1)) == [
                str(a["threshold"]), str(a["used_millicredits"]), str(a["budget_millicredits"])]
        one = (await http.get(f"/console/orgs/{A}/alerts", params={"limit": "1"})).text
        assert first_cells(one, "alerts") == [api[0]["id"]] and "Older →" in one
    audit = await console.pool.fetch("SELECT actor, action, org_id, detail::text AS detail FROM creditgate.admin_audit "
                                     "WHERE action = 'org.alert_thresholds'")
    assert [(r["actor"], r["org_id"], r["detail"]) for r in audit] == [
        (ADMIN_A, A, '{"pool": [1, 5], "allocation": []}')]


async def test_bad_thresholds_redisplay_the_form_and_change_nothing(console: ConsoleWorld) -> None:
    async with console.signed_in("operator") as http:
        for pool, message in (("abc", "pool&#x27; must be whole percents"), ("0", "from 1 to 100"),
                              ("101", "from 1 to 100"), (", ".join(["5"] * 11), "at most 10")):
            answer = await post(http, f"/console/orgs/{A}/alert-thresholds", {"pool": pool, "allocation": "90"})
            assert answer.status_code == 400 and message in answer.text, (pool, answer.text)
            assert f'name="pool" id="f-pool" value="{pool}"' in answer.text
            assert 'name="allocation" id="f-allocation" value="90"' in answer.text
    assert await console.api("operator", f"/admin/orgs/{A}/alert-thresholds") == {
        "pool": [50, 80, 100], "allocation": [50, 80, 100]}


async def test_who_may_change_them(console: ConsoleWorld) -> None:
    async with console.client() as api:
        read_only = (await api.post("/admin/keys", json={"user_id": ADMIN_A, "org_id": A, "read_only": True},
                                    headers=OPERATOR)).json()["key"]
    async with console.signed_in("admin_b") as http:
        token = re.search(r'name="csrf" value="([^"]+)"', (await http.get("/console")).text)
        assert token is not None
        answer = await http.post(f"/console/orgs/{A}/alert-thresholds", headers=ORIGIN,
                                 data={"pool": "1", "allocation": "1", "csrf": token.group(1)})
        assert answer.status_code == 403 and 'data-code="not_a_member"' in answer.text
        assert (await http.get(f"/console/orgs/{A}/alerts")).status_code == 403
    async with console.client() as http:
        assert (await http.post("/console/login", data={"credential": read_only}, headers=ORIGIN)).status_code == 303
        answer = await post(http, f"/console/orgs/{A}/alert-thresholds", {"pool": "1", "allocation": "1"})
        assert answer.status_code == 403 and 'data-code="read_only_key"' in answer.text
    async with console.signed_in("operator") as http:
        answer = await post(http, f"/console/orgs/{A}/alert-thresholds", {"pool": "1", "allocation": "1"})
        assert answer.status_code == 303
        assert (await post(http, "/console/orgs/org_nowhere/alert-thresholds", {"pool": "1"})).status_code == 404
    assert await console.api("operator", f"/admin/orgs/{A}/alert-thresholds") == {"pool": [1], "allocation": [1]}
