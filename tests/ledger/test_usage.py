"""The ledger's usage reads (proxy/ledger/usage.py): totals by group with attribution filters, the records of a
period page by page, BYOK usage per provider."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from proxy.db.pool import Row
from proxy.ledger.batch import run_batch
from proxy.ledger.pg import PgLedger
from tests.ledger.conftest import ORG, U1, U2, hold, set_clock, set_clock_to, usage


async def test_usage_and_provider_usage(small_org: PgLedger) -> None:
    await small_org.reserve(hold(ORG, U1, "r1", 100))
    await small_org.settle(ORG, "r1", usage(40, prompt=7, completion=3))
    await small_org.reserve(hold(ORG, U2, "r2", 0, byok=True))
    await small_org.settle(ORG, "r2", usage(0, prompt=5, completion=2, list_price=90))
    assert await small_org.usage(ORG, group_by="user", user_id=None, start=None, end=None) == [
        {"user": U1, "requests": 1, "prompt_tokens": 7, "completion_tokens": 3, "charged_millicredits": 40,
         "list_price_millicredits": 40},
        {"user": U2, "requests": 1, "prompt_tokens": 5, "completion_tokens": 2, "charged_millicredits": 0,
         "list_price_millicredits": 90}]
    assert await small_org.provider_usage(ORG, U2, "openai") == {
        "requests": 1, "prompt_tokens": 5, "completion_tokens": 2, "list_price_millicredits": 90}
    assert (await small_org.provider_usage(ORG, U1, "openai"))["requests"] == 0



async def test_usage_by_end_user_tag_and_key_with_filters(org: PgLedger) -> None:
    """Attribution (migration 0008): a request counts once in each of its tags' groups; the untagged and the
    requests without an end user are the null group, listed last."""
    for rid, user, end_user, tags, charge in (("r1", U1, "cust-1", ("support", "beta"), 30),
                                              ("r2", U2, "cust-1", ("beta",), 50), ("r3", U1, None, (), 7)):
        await org.reserve(replace(hold(ORG, user, rid, 100), end_user=end_user, tags=tags))
        await org.settle(ORG, rid, usage(charge, prompt=charge, completion=1))

    def totals(rows: Sequence[Row], key: str) -> list[tuple[Any, int, int, int]]:
        return [(r[key], r["requests"], r["prompt_tokens"], r["charged_millicredits"]) for r in rows]

    everyone: dict[str, Any] = {"user_id": None, "start": None, "end": None}
    assert totals(await org.usage(ORG, group_by="end_user", **everyone), "end_user") == [
        ("cust-1", 2, 80, 80), (None, 1, 7, 7)]
    assert totals(await org.usage(ORG, group_by="tag", **everyone), "tag") == [
        ("beta", 2, 80, 80), ("support", 1, 30, 30), (None, 1, 7, 7)]
    assert totals(await org.usage(ORG, group_by="key_id", **everyone), "key_id") == [("key_test", 3, 87, 87)]
    assert totals(await org.usage(ORG, group_by="model", tag="beta", **everyone), "model") == [
        ("fake-small", 2, 80, 80)]
    assert totals(await org.usage(ORG, group_by="tag", end_user="cust-1", tag="support", **everyone), "tag") == [
        ("beta", 1, 30, 30), ("support", 1, 30, 30)]
    assert await org.usage(ORG, group_by="tag", end_user="cust-2", **everyone) == []
    assert totals(await org.usage(ORG, group_by="tag", user_id=U2, start=None, end=None), "tag") == [
        ("beta", 1, 50, 50)]
    # limit: one more group than asked says there are more
    assert [r["tag"] for r in await org.usage(ORG, group_by="tag", limit=1, **everyone)] == ["beta", "support"]
    assert [r["tag"] for r in await org.usage(ORG, group_by="tag", limit=3, **everyone)] == ["beta", "support", None]



async def test_usage_records_page_by_keyset_in_the_period(org: PgLedger, db: asyncpg.Connection) -> None:
    """Five records, two of them at the same instant: pages of two walk every record in the period once,
    oldest first, ties by request id; the filters hold on every page."""
    t0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    for rid, tags in (("e", ("x",)), ("b", ()), ("a", ("x", "y")), ("d", ("x",)), ("c", ("x",))):
        await org.reserve(replace(hold(ORG, U1, rid, 100), end_user=f"cust-{rid}", tags=tags))
    spent = usage(5, prompt=3, completion=2, list_price=4)
    for seconds, rids in ((0, ("e",)), (1, ("b", "a")), (2, ("d",)), (9, ("c",))):
        await set_clock_to(db, t0 + timedelta(seconds=seconds))
        # one transaction: a and b are recorded at the very same instant
        await run_batch(org.db, 120, [], [(ORG, rid, spent) for rid in rids], 10)
    await set_clock(db, None)
    t1 = await db.fetchval("SELECT recorded_at FROM creditgate.usage_records WHERE request_id = 'a'")
    assert t1 == await db.fetchval("SELECT recorded_at FROM creditgate.usage_records WHERE request_id = 'b'")
    start, end = t0, t0 + timedelta(seconds=9)  # c, at the end, is outside [start, end)
    seen: list[str] = []
    after = None
    while True:
        page = await org.usage_records(ORG, user_id=None, start=start, end=end, end_user=None, tag=None,
                                       after=after, limit=2)
        seen += [r["request_id"] for r in page]
        if len(page) < 2:
            break
        after = (page[-1]["recorded_at"], page[-1]["request_id"])
    assert seen == ["e", "a", "b", "d"]
    first = (await org.usage_records(ORG, user_id=U1, start=start, end=end, end_user=None, tag="y", after=None,
                                     limit=10))
    assert first == [{"request_id": "a", "recorded_at": t1, "user_id": U1,
                      "key_id": "key_test", "end_user": "cust-a", "tags": ["x", "y"], "model": "fake-small",
                      "prompt_tokens": 3, "completion_tokens": 2, "charged_millicredits": 5,
                      "list_price_millicredits": 4, "usage_source": "provider", "byok": False,
                      "price_version": None}]
    tagged = await org.usage_records(ORG, user_id=None, start=start, end=end + timedelta(seconds=1), end_user=None,
                                     tag="x", after=(t1, "a"), limit=10)
    assert [r["request_id"] for r in tagged] == ["d", "c"]
    assert [r["tags"] for r in await org.usage_records(ORG, user_id=None, start=start, end=end, end_user="cust-b",
                                                         tag=None, after=None, limit=10)] == [[]]
    assert await org.usage_records(ORG, user_id=U2, start=start, end=end, end_user=None, tag=None, after=None,
                                   limit=10) == []
