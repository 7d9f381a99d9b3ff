"""Requests, one request and the ledger: the admin API's rows and paging."""

from __future__ import annotations

import re

from proxy.console.activity import request_href
from tests.admin.world import MEMBER_A, TARGET_A, A, hold

from .conftest import ConsoleWorld


def first_cells(html: str, table: str) -> list[str]:
    body = html.split(f'<table id="{table}">', 1)[1].split("</table>", 1)[0].split("<tbody>", 1)[1]
    return [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<tr><td[^>]*>(.*?)</td>", body)]


async def test_requests_and_a_requests_detail(console: ConsoleWorld) -> None:
    await console.ledger.reserve(hold(A, TARGET_A, "req a/2?x", 300))
    async with console.signed_in("admin_a") as http:
        html = (await http.get(f"/console/orgs/{A}/requests")).text
        assert first_cells(html, "holds") == ["req a/2?x"]
        assert first_cells(html, "requests") == ["req a/2?x", "req-a1"]
        assert f'href="{request_href(A, "req a/2?x")}"' in html and request_href(A, "req a/2?x").endswith(
            "/requests/req%20a%2F2%3Fx")
        paged = (await http.get(f"/console/orgs/{A}/requests", params={"limit": "1"})).text
        assert first_cells(paged, "requests") == ["req a/2?x"]
        older = re.search(r'<a href="([^"]+)">Older →</a>', paged)
        assert older is not None
        rest = (await http.get(older.group(1).replace("&amp;", "&"))).text
        assert first_cells(rest, "requests") == ["req-a1"] and "Older →" not in rest
        assert first_cells((await http.get(f"/console/orgs/{A}/requests", params={"user_id": MEMBER_A})).text,
                           "requests") == ["req-a1"]

        detail = (await http.get(request_href(A, "req-a1"))).text
        api = await console.ledger.request(A, "req-a1")  # what GET /v1/requests/{id} answers (and the user)
        assert api is not None
        assert re.findall(r'id="(held|charged|list-price)" data-mc="(\d+)"', detail) == [
            ("held", str(api["held_millicredits"])), ("charged", str(api["charged_millicredits"])),
            ("list-price", str(api["list_price_millicredits"]))]
        assert '<span id="usage-source">provider</span>' in detail and '<span id="status">settled</span>' in detail
        pending = (await http.get(request_href(A, "req a/2?x"))).text
        assert '<span id="status">pending</span>' in pending and '<span id="usage-source">—</span>' in pending
        assert (await http.get(request_href(A, "req-b1"))).status_code == 404  # B's request, asked in A
        assert (await http.get(f"/console/orgs/{A}/requests/" + "x" * 513)).status_code == 400


async def test_the_ledger_pages_as_the_admin_api_does(shared_console: ConsoleWorld) -> None:
    async with shared_console.signed_in("admin_a") as http:
        api = await shared_console.api("admin_a", f"/admin/orgs/{A}/ledger", limit=2)
        html = (await http.get(f"/console/orgs/{A}/ledger", params={"limit": "2"})).text
        assert first_cells(html, "ledger") == [e["id"] for e in api["data"]]
        amounts = re.findall(r'<tr><td>[^<]*</td><td>[^<]*</td><td class="num" data-mc="(-?\d+)"', html)
        assert amounts == [str(e["amount_millicredits"]) for e in api["data"]]
        assert api["has_more"] and "Older →" in html
        after = api["data"][-1]["id"]
        rest = await shared_console.api("admin_a", f"/admin/orgs/{A}/ledger", limit=2, after=after)
        page2 = (await http.get(f"/console/orgs/{A}/ledger", params={"limit": "2", "after": after})).text
        assert first_cells(page2, "ledger") == [e["id"] for e in rest["data"]]
        member = await shared_console.api("admin_a", f"/admin/orgs/{A}/ledger", user_id=MEMBER_A)
        mine = (await http.get(f"/console/orgs/{A}/ledger", params={"user_id": MEMBER_A})).text
        assert first_cells(mine, "ledger") == [e["id"] for e in member["data"]] and "Entries of usr_member_a" in mine
