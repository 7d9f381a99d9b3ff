"""The overview and the usage page show the admin API's numbers; the burn rate and the run-out day."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime

from proxy.console.pages import burn
from tests.admin.world import MEMBER_A, A, hold, spent

from .conftest import ConsoleWorld

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def day(charged: int | None) -> dict[str, int | None]:
    return {"charged_millicredits": charged}


def test_burn_rate_and_run_out_day() -> None:
    assert burn([], 1000, NOW) == (0, "No spend in the last 7 days: the pool does not run out at this rate.")
    assert burn([day(7000)], 0, NOW) == (1000, "The pool has no credit available.")
    assert burn([day(3000), day(4000), day(None)], 10_000, NOW) == (
        1000, "At this rate the pool runs out on 2026-03-20 (in 10 days).")
    assert burn([day(1)], 10**15, NOW) == (0, "At this rate the pool lasts more than 100 years.")
    assert burn([day(6)], 1, NOW) == (0, "At this rate the pool runs out on 2026-03-11 (in 1 day).")


def data_mc(html: str, element_id: str) -> int:
    found = re.search(rf'id="{element_id}" data-mc="(-?\d+)"', html)
    assert found is not None, element_id
    return int(found.group(1))


def keyed(html: str, table: str, column: int) -> dict[str, str]:
    """First cell's data-key -> the `column`th cell's data-mc or data-n (1-based) of each row."""
    body = html.split(f'<table id="{table}">', 1)[1].split("</table>", 1)[0]
    out = {}
    for row in re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>", 1)[1]):
        cells = re.findall(r"<td([^>]*)>", row)
        key = re.search(r'data-key="([^"]*)"', cells[0])
        value = re.search(r'data-(?:mc|n)="(\d+)"', cells[column - 1])
        assert key is not None and value is not None
        out[key.group(1)] = value.group(1)
    return out


async def test_the_overview_equals_the_admin_api(shared_console: ConsoleWorld) -> None:
    api = await shared_console.api("admin_a", f"/admin/orgs/{A}")
    async with shared_console.signed_in("admin_a") as http:
        html = (await http.get(f"/console/orgs/{A}")).text
    for name in ("balance", "held", "available", "granted", "overage"):
        assert data_mc(html, f"pool-{name}") == api["pool"][name]
    assert (api["pool"]["balance"], api["pool"]["available"]) == (999_300, 999_300)
    for member in api["members"]:
        row = re.search(rf'<tr><td data-user="{member["user_id"]}">(.*?)</tr>', html)
        assert row is not None
        amounts = re.findall(r'<td class="num"(?: data-mc="(\d+)")?>', row.group(1))
        allocation = member["allocation"]
        expected = [allocation["limit"], allocation["used"], allocation["held"], allocation["available"]]
        assert [int(a) if a else None for a in amounts] == expected
    assert data_mc(html, "burn-rate") == 100  # 700 charged today over 7 days
    assert 'id="runs-out">At this rate the pool runs out on ' in html
    assert '<td data-user="usr_member_a">' in html and MEMBER_A in html


async def test_the_usage_page_equals_the_admin_api(shared_console: ConsoleWorld) -> None:
    async with shared_console.signed_in("operator") as http:
        html = (await http.get(f"/console/orgs/{A}/usage", params={"days": "7"})).text
        for group in ("model", "user", "day", "end_user", "tag"):
            api = await shared_console.api("operator", f"/admin/orgs/{A}/usage", group_by=group)
            rows = {r[group] or "": r for r in api["data"]}
            assert rows, group
            for column, field in ((2, "requests"), (3, "prompt_tokens"), (4, "completion_tokens"),
                                  (5, "charged_millicredits"), (6, "list_price_millicredits")):
                assert keyed(html, f"usage-{group}", column) == {k: str(v[field]) for k, v in rows.items()}, group
        assert re.findall(r'data-series="platform" data-value="(\d+)"', html)[-1] == "1"
        assert re.findall(r'data-series="BYOK" data-value="(\d+)"', html) == ["0"] * 7
        assert 'id="usage-power_level"' in html and 'id="chart-power_level"' in html
        for days in ("30", "90"):
            assert len(re.findall(r'data-series="BYOK"', (await http.get(f"/console/orgs/{A}/usage",
                                                                          params={"days": days})).text)) == int(days)


async def test_usage_by_power_level_equals_the_admin_api(console: ConsoleWorld) -> None:
    """Two requests at levels (one downgraded to eco is recorded as eco) beside the seeded one without."""
    for rid, level, charge in (("req-level-1", "balanced", 300), ("req-level-2", "eco", 50),
                               ("req-level-3", "balanced", 25)):
        await console.ledger.reserve(replace(hold(A, MEMBER_A, rid, 900), power_level=level))
        await console.ledger.settle(A, rid, spent(charge))
    api = await console.api("operator", f"/admin/orgs/{A}/usage", group_by="power_level")
    assert {r["power_level"]: r["charged_millicredits"] for r in api["data"]} == {
        None: 700, "balanced": 325, "eco": 50}
    async with console.signed_in("admin_a") as http:
        html = (await http.get(f"/console/orgs/{A}/usage", params={"days": "7"})).text
    assert keyed(html, "usage-power_level", 5) == {"": "700", "balanced": "325", "eco": "50"}
    assert keyed(html, "usage-power_level", 2) == {"": "1", "balanced": "2", "eco": "1"}
    assert "<th>Power level</th>" in html
    bars = re.findall(r'data-label="([^"]*)" data-value="(\d+)"', html.split('id="chart-power_level"', 1)[1]
                      .split("</svg>", 1)[0])
    assert bars == [("(none)", "700"), ("balanced", "325"), ("eco", "50")]
