"""The ledger's reads and the admin writes: history per user, grants and adjustments (usage: test_usage.py)."""

from __future__ import annotations

import asyncpg
import pytest

from proxy.errors import ProxyError
from proxy.ledger.pg import PgLedger
from tests.ledger.conftest import (
    ORG,
    U1,
    U2,
    hold,
    pool_state,
    usage,
    violations,
)


async def test_usage_by_model_and_day_and_history_per_user(org: PgLedger) -> None:
    await org.reserve(hold(ORG, U1, "a", 100))
    await org.settle(ORG, "a", usage(30, prompt=4, completion=6))
    await org.reserve(hold(ORG, U2, "b", 100))
    await org.settle(ORG, "b", usage(50, prompt=1, completion=2))
    by_model = await org.usage(ORG, group_by="model", user_id=None, start=None, end=None)
    assert by_model == [{"model": "fake-small", "requests": 2, "prompt_tokens": 5, "completion_tokens": 8,
                         "charged_millicredits": 80, "list_price_millicredits": 80}]
    by_day = await org.usage(ORG, group_by="day", user_id=U2, start=None, end=None)
    assert len(by_day) == 1 and by_day[0]["charged_millicredits"] == 50 and len(by_day[0]["day"]) == 10
    rows, more = await org.entries(ORG, user_id=U2, limit=10, after=None)
    assert [(r["kind"], r["amount_millicredits"], r["balance_delta"], r["held_delta"]) for r in rows] == [
        ("post", 50, -50, -100), ("hold", 100, 0, 100)] and not more


async def test_grants_net_overage_and_adjustments(small_org: PgLedger, db: asyncpg.Connection) -> None:
    await small_org.reserve(hold(ORG, U1, "r1", 1000))
    await small_org.settle(ORG, "r1", usage(1300))
    assert await pool_state(db, ORG) == (1000, 1000, 0, 300)
    assert (await small_org.pool(ORG))["available"] == 0
    with pytest.raises(ProxyError) as exc:  # overage blocks admission
        await small_org.reserve(hold(ORG, U1, "r2", 0))
    assert exc.value.code == "org_pool_exhausted"
    g = await small_org.grant(ORG, 500, "top up", "g2", None, "operator")
    assert (g["replayed"], g["pool"]["balance"], g["pool"]["available"]) == (False, 200, 200)
    assert await pool_state(db, ORG) == (1500, 1300, 0, 0)
    replay = await small_org.grant(ORG, 500, "top up", "g2", None, "operator")
    assert (replay["replayed"], replay["id"]) == (True, g["id"])
    with pytest.raises(ProxyError) as exc:
        await small_org.grant(ORG, 501, "top up", "g2", None, "operator")
    assert (exc.value.status, exc.value.code) == (409, "idempotency_key_reused")
    with pytest.raises(ProxyError) as exc:
        await small_org.adjust(ORG, -201, "fix", "a1", "operator")
    assert (exc.value.status, exc.value.code) == (400, "invalid_value")
    adj = await small_org.adjust(ORG, -200, "fix", "a1", "operator")
    assert adj["pool"]["available"] == 0
    rows, more = await small_org.entries(ORG, user_id=None, limit=2, after=None)
    assert [r["kind"] for r in rows] == ["adjustment", "grant"] and more
    rows2, more2 = await small_org.entries(ORG, user_id=None, limit=10, after=rows[-1]["id"])
    assert [r["kind"] for r in rows2] == ["post", "hold", "grant"] and not more2
    assert await violations(db) == []
