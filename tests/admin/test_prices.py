"""The operator reads which prices a charge came from: the price versions stored and one version's table,
over the real ledger (the seeded requests were held and charged at the shipped configuration's prices)."""

from __future__ import annotations

import hashlib
import json

from .world import PRICES, A, World


async def test_the_operator_reads_the_versions_and_each_table(world: World) -> None:
    listed = await world.call("operator", "GET", "/admin/price-versions")
    assert listed.status_code == 200
    (row,) = listed.json()["data"]
    assert (row["version"], listed.json()["has_more"]) == (PRICES.version, False)
    one = (await world.call("operator", "GET", f"/admin/price-versions/{PRICES.version}")).json()
    assert one == {"id": row["id"], "version": PRICES.version, "created_at": row["created_at"],
                   "prices": json.loads(PRICES.prices)}
    # an auditor re-hashes the table: the version names exactly these prices
    canonical = json.dumps(one["prices"], sort_keys=True, separators=(",", ":"))
    assert "pv_" + hashlib.sha256(canonical.encode()).hexdigest()[:16] == PRICES.version
    small = one["prices"]["models"]["fake-small"]
    assert small == [{"deployment": "fake-small-1", "provider": "openai", "input_cost_per_token": "0.00000005",
                      "output_cost_per_token": "0.0000001", "output_cost_per_image": None,
                      "source": {"input_cost_per_token": "config", "output_cost_per_token": "config"}}]
    assert one["prices"]["tiers"]["starter"] == {"markup": "0.4"}


async def test_requests_usage_and_the_ledger_name_their_version(world: World) -> None:
    record = (await world.call("member_a", "GET", "/v1/requests/req-a1")).json()
    assert (record["price_version"], record["charged_millicredits"]) == (PRICES.version, 700)
    usage = (await world.call("admin_a", "GET", f"/admin/orgs/{A}/usage?group_by=price_version")).json()
    assert usage == {"data": [{"price_version": PRICES.version, "requests": 1, "prompt_tokens": 10,
                               "completion_tokens": 4, "charged_millicredits": 700, "list_price_millicredits": 1400}],
                     "has_more": False}
    entries = (await world.call("admin_a", "GET", f"/admin/orgs/{A}/ledger")).json()["data"]
    assert [(e["kind"], e["price_version"]) for e in entries] == [
        ("post", PRICES.version), ("hold", PRICES.version), ("grant", None)]


async def test_only_the_operator_reads_them_and_unknown_versions_are_404(world: World) -> None:
    for caller in ("member_a", "admin_a"):
        for path in ("/admin/price-versions", f"/admin/price-versions/{PRICES.version}"):
            refused = await world.call(caller, "GET", path)
            assert (refused.status_code, refused.json()["error"]["code"]) == (403, "operator_only")
    for version in ("pv_0000000000000000", "pv_XYZ", "v1", "pv_" + "0" * 300):
        missing = await world.call("operator", "GET", f"/admin/price-versions/{version}")
        assert missing.status_code == 404, version
        assert missing.json()["error"] == {"message": f"No price version '{version[:32]}'.", "type": "not_found_error",
                                           "param": None, "code": "price_version_not_found"}
    bad_cursor = await world.call("operator", "GET", "/admin/price-versions?after=abc")
    assert (bad_cursor.status_code, bad_cursor.json()["error"]["param"]) == (400, "after")
