"""The console's own reads on the real PostgreSQL: grants, recent requests (paged), holds in flight and
the platform / BYOK split, each confined to its org."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from proxy.console.reads import ConsoleReads
from proxy.errors import ProxyError
from tests.admin.world import GRANTED, MEMBER_A, TARGET_A, A, B, hold, spent

from .conftest import ConsoleWorld


async def test_grants_requests_holds_and_the_split(console: ConsoleWorld) -> None:
    reads = ConsoleReads(console.pool)
    await console.ledger.reserve(hold(A, TARGET_A, "req-a2", 300))
    await console.ledger.reserve(replace(hold(A, TARGET_A, "req-a3", 0), byok=True))
    await console.ledger.settle(A, "req-a3", spent(0))

    [grant] = await reads.grants(A)
    assert (grant["id"], grant["kind"], grant["amount"], grant["reason"], grant["actor"], grant["expires_at"]) == (
        "grant_1", "grant", GRANTED, "seed", "operator", None)

    rows, more = await reads.requests(A, limit=2, after=None)
    assert [(r["request_id"], r["state"], r["amount"], r["charged"], r["usage_source"], r["byok"]) for r in rows] == [
        ("req-a3", "posted", 0, 0, "provider", True), ("req-a2", "pending", 300, None, None, False)]
    assert more
    older, more = await reads.requests(A, limit=2, after=rows[-1]["id"])
    assert [(r["request_id"], r["user_id"], r["charged"], r["model"]) for r in older] == [
        ("req-a1", MEMBER_A, 700, "fake-small")]
    assert not more
    mine, _ = await reads.requests(A, limit=10, after=None, user_id=MEMBER_A)
    assert [r["request_id"] for r in mine] == ["req-a1"]
    assert [r["request_id"] for r in (await reads.requests(B, limit=10, after=None))[0]] == ["req-b1"]
    with pytest.raises(ProxyError) as caught:
        await reads.requests(A, limit=2, after="abc")
    assert caught.value.param == "after"

    [flying] = await reads.in_flight(A)
    assert (flying["request_id"], flying["user_id"], flying["amount"]) == ("req-a2", TARGET_A, 300)
    assert await reads.in_flight(B) == []

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    split = await reads.platform_and_byok(A, today, today + timedelta(days=1))
    assert [(r["byok"], r["requests"], r["charged"]) for r in split] == [(False, 1, 700), (True, 1, 0)]
    assert await reads.platform_and_byok(A, today - timedelta(days=2), today - timedelta(days=1)) == []
    assert [r["requests"] for r in await reads.platform_and_byok(B, today, today + timedelta(days=1))] == [1]


async def test_an_unreachable_database_is_ledger_unavailable(console: ConsoleWorld) -> None:
    reads = ConsoleReads(console.pool)
    await console.pool.close()
    with pytest.raises(ProxyError) as caught:
        await reads.grants(A)
    assert caught.value.code == "ledger_unavailable"
