"""Budget alerts through the real ledger on the real PostgreSQL: crossing 50, 80 then 100 % fires each
once (pool: spent + held against granted; allocation: used + held against the limit); a new period fires
again; two replicas settling at once never fire a threshold twice; an org's own thresholds; each alert
exported once and counted once."""

from __future__ import annotations

import asyncio

import asyncpg

from proxy.export.alerts import PgAlerts
from proxy.export.outbox import PgOutbox
from proxy.ledger.pg import PgLedger
from tests.ledger.conftest import add_member, add_org, funded_member, hold, set_clock, usage

from .conftest import rows

ORG, USER = "org_alerts", "usr_alerts"


async def spend(ledger: PgLedger, rid: str, amount: int, user: str = USER) -> None:
    await ledger.reserve(hold(ORG, user, rid, amount))
    await ledger.settle(ORG, rid, usage(amount))


async def fired(alerts: PgAlerts) -> list[tuple[str, str | None, int, int, int]]:
    found, _ = await alerts.alerts(ORG, 100, None)
    return [(a["scope"], a["user_id"], a["threshold"], a["used_millicredits"], a["budget_millicredits"])
            for a in reversed(found)]


async def test_the_pool_crossing_50_80_100_fires_each_once(outbox: PgOutbox, alerts: PgAlerts, ledger: PgLedger,
                                                          db: asyncpg.Connection) -> None:
    await funded_member(db, ledger, ORG, USER, 10_000)
    await spend(ledger, "r1", 4_000)
    assert await fired(alerts) == []
    await spend(ledger, "r2", 1_000)
    assert await fired(alerts) == [("pool", None, 50, 5_000, 10_000)]
    await spend(ledger, "r3", 2_999)
    await spend(ledger, "r4", 1)
    await spend(ledger, "r5", 1)
    assert await fired(alerts) == [("pool", None, 50, 5_000, 10_000), ("pool", None, 80, 8_000, 10_000)]
    await ledger.reserve(hold(ORG, USER, "r6", 1_999))  # held counts: 8_001 + 1_999 = 100 %
    assert [a[2] for a in await fired(alerts)] == [50, 80, 100]
    await ledger.settle(ORG, "r6", usage(1_000))
    assert [a[2] for a in await fired(alerts)] == [50, 80, 100]
    events = [r for r in await rows(db) if r["code"] == "budget_alert"]
    ids = [a["id"] for a in reversed((await alerts.alerts(ORG, 10, None))[0])]
    assert [r["transaction_id"] for r in events] == [f"alert#{i}" for i in ids]
    assert [r["p"]["threshold_percent"] for r in events] == [50, 80, 100]
    assert events[0]["p"] == {"alert_id": int(ids[0]), "scope": "pool", "user_id": None,
                              "threshold_percent": 50, "used_millicredits": 5_000, "budget_millicredits": 10_000,
                              "period_start": events[0]["p"]["period_start"]}


async def test_a_top_up_starts_a_new_pool_period(outbox: PgOutbox, alerts: PgAlerts, ledger: PgLedger,
                                                 db: asyncpg.Connection) -> None:
    await funded_member(db, ledger, ORG, USER, 1_000)
    await spend(ledger, "r1", 600)
    await ledger.grant(ORG, 1_000, "top-up", "g2", None, "operator")  # 600 of 2_000: 30 %
    await spend(ledger, "r2", 500)  # 1_100 of 2_000: 55 % in the new period
    found, _ = await alerts.alerts(ORG, 10, None)
    assert [(a["threshold"], a["used_millicredits"], a["budget_millicredits"]) for a in reversed(found)] == [
        (50, 600, 1_000), (50, 1_100, 2_000)]
    assert found[0]["period_start"] > found[1]["period_start"]


async def test_an_allocation_fires_per_period_and_again_in_the_next(outbox: PgOutbox, alerts: PgAlerts,
                                                                    ledger: PgLedger, db: asyncpg.Connection) -> None:
    await funded_member(db, ledger, ORG, USER, 1_000_000, limit=1_000, period="day")
    await spend(ledger, "d1-a", 500)
    await spend(ledger, "d1-b", 300)
    assert [(a[0], a[1], a[2]) for a in await fired(alerts)] == [("allocation", USER, 50), ("allocation", USER, 80)]
    await set_clock(db, 86_400)  # tomorrow: a new allocation period
    await spend(ledger, "d2-a", 600)
    await set_clock(db, None)
    found, _ = await alerts.alerts(ORG, 10, None)
    assert [(a["scope"], a["threshold"], a["used_millicredits"]) for a in reversed(found)] == [
        ("allocation", 50, 500), ("allocation", 80, 800), ("allocation", 50, 600)]
    assert found[0]["period_start"] != found[1]["period_start"]


async def test_two_replicas_settling_at_once_fire_each_threshold_once(ledger_db: str, outbox: PgOutbox,
                                                                     alerts: PgAlerts,
                                                                     db: asyncpg.Connection) -> None:
    await add_org(db, ORG)
    await add_member(db, ORG, USER, limit=10_000)
    replicas = [await PgLedger.connect(ledger_db, hold_ttl_seconds=120) for _ in range(2)]
    try:
        await replicas[0].grant(ORG, 10_000, "seed", "g1", None, "operator")
        await asyncio.gather(*(spend(replicas[i % 2], f"r{i}", 500) for i in range(20)))
    finally:
        for replica in replicas:
            await replica.close()
    assert sorted((a[0], a[2]) for a in await fired(alerts)) == [
        ("allocation", 50), ("allocation", 80), ("allocation", 100), ("pool", 50), ("pool", 80), ("pool", 100)]
    assert len([r for r in await rows(db) if r["code"] == "budget_alert"]) == 6
    counted = await asyncio.gather(outbox.count_alerts(), outbox.count_alerts(), outbox.count_alerts())
    assert sorted(c for batch in counted for c in batch) == [
        ("allocation", 50), ("allocation", 80), ("allocation", 100), ("pool", 50), ("pool", 80), ("pool", 100)]
    assert await outbox.count_alerts() == []


async def test_an_orgs_own_thresholds(outbox: PgOutbox, alerts: PgAlerts, ledger: PgLedger,
                                      db: asyncpg.Connection) -> None:
    await funded_member(db, ledger, ORG, USER, 100_000, limit=1_000)
    assert await alerts.thresholds(ORG) == {"pool": [50, 80, 100], "allocation": [50, 80, 100]}
    assert await alerts.set_thresholds(ORG, None, [90, 25, 25]) == {"pool": [50, 80, 100], "allocation": [25, 90]}
    assert await alerts.set_thresholds(ORG, [], None) == {"pool": [], "allocation": [25, 90]}
    await spend(ledger, "r1", 950)
    assert [(a[0], a[2]) for a in await fired(alerts)] == [("allocation", 25), ("allocation", 90)]


async def test_alerts_page_newest_first(outbox: PgOutbox, alerts: PgAlerts, ledger: PgLedger,
                                        db: asyncpg.Connection) -> None:
    await funded_member(db, ledger, ORG, USER, 1_000, limit=1_000)
    await spend(ledger, "r1", 1_000)
    page1, more1 = await alerts.alerts(ORG, 4, None)
    page2, more2 = await alerts.alerts(ORG, 4, page1[-1]["id"])
    assert (len(page1), more1, len(page2), more2) == (4, True, 2, False)
    assert [int(a["id"]) for a in page1 + page2] == sorted((int(a["id"]) for a in page1 + page2), reverse=True)
    assert await alerts.alerts("org_other", 10, None) == ([], False)
