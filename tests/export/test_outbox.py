"""The outbox through the real ledger on the real PostgreSQL: the triggers write exactly one event per
settlement, correction, grant and adjustment in the money's own transaction; claims are disjoint across
concurrent claimers and leased; failures are rescheduled or dead-lettered; dead letters are listed and
retried; delivered rows are pruned after their retention."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

from proxy.export.outbox import Failure, PgOutbox
from proxy.ledger.pg import PgLedger
from tests.ledger.conftest import add_member, add_org, funded_member, hold, set_clock, usage

from .conftest import rows

ORG, USER = "org_exp", "usr_exp"


async def funded(db: asyncpg.Connection, ledger: PgLedger, *, credit: int = 1_000_000,
                 limit: int | None = None) -> None:
    await funded_member(db, ledger, ORG, USER, credit, limit=limit, key="seed-1")


def usage_properties(rid: str, charged: int, **changes: object) -> dict[str, object]:
    return {"request_id": rid, "model": "fake-small", "provider": "openai", "deployment": "dep-1",
            "prompt_tokens": 10, "completion_tokens": 5, "charged_millicredits": charged,
            "list_price_millicredits": charged, "overage_millicredits": 0, "usage_source": "provider",
            "estimated": False, "byok": False, "user_id": USER, "key_id": "key_test", "price_version": None,
            "end_user": None, "tags": None, "period_start": "1970-01-01T00:00:00Z", **changes}


async def test_a_settlement_and_a_grant_each_write_one_event(outbox: PgOutbox, ledger: PgLedger,
                                                            db: asyncpg.Connection) -> None:
    await funded(db, ledger)
    await ledger.reserve(hold(ORG, USER, "req-1", 900))
    await ledger.settle(ORG, "req-1", usage(700))
    await ledger.settle(ORG, "req-1", usage(700))  # already settled: no second event
    found = await rows(db)
    grant_id = await db.fetchval("SELECT id FROM creditgate.grants WHERE org_id = $1", ORG)
    assert [(r["code"], r["transaction_id"], r["attempts"], r["delivered_at"]) for r in found] == [
        ("credit_grant", f"grant#{grant_id}", 0, None), ("llm_usage", "req-1", 0, None)]
    assert found[0]["p"] == {"grant_id": grant_id, "amount_millicredits": 1_000_000, "reason": "seed",
                             "actor": "operator", "expires_at": None}
    assert found[1]["p"] == usage_properties("req-1", 700)


async def test_nothing_is_written_until_a_replica_with_an_export_url_turns_it_on(
        pool: asyncpg.Pool, ledger: PgLedger, db: asyncpg.Connection) -> None:
    await funded(db, ledger)
    await ledger.reserve(hold(ORG, USER, "req-off", 900))
    await ledger.settle(ORG, "req-off", usage(700))
    assert await rows(db) == []
    await PgOutbox(pool).enable()
    await ledger.reserve(hold(ORG, USER, "req-on", 900))
    await ledger.settle(ORG, "req-on", usage(600))
    assert [(r["code"], r["transaction_id"]) for r in await rows(db)] == [("llm_usage", "req-on")]


async def test_a_late_settle_after_the_sweeper_exports_the_estimate_then_its_correction(
        outbox: PgOutbox, ledger: PgLedger, db: asyncpg.Connection) -> None:
    await funded(db, ledger)
    await ledger.reserve(hold(ORG, USER, "req-late", 900))
    await set_clock(db, 200)  # past the 120 s TTL: the sweeper settles the hold from its prompt
    assert (await ledger.expire())[0] == 1
    await ledger.settle(ORG, "req-late", usage(450, completion=40))
    await set_clock(db, None)
    found = [r for r in await rows(db) if r["code"] != "credit_grant"]
    assert [(r["code"], r["transaction_id"]) for r in found] == [
        ("llm_usage", "req-late"), ("llm_usage_correction", "req-late#correction")]
    estimate = found[0]["p"]
    assert (estimate["estimated"], estimate["usage_source"], estimate["completion_tokens"]) == (
        True, "prompt_only", 0)
    assert isinstance(estimate["charged_millicredits"], int)
    assert found[1]["p"] == usage_properties(
        "req-late", 450, completion_tokens=40, corrects="req-late",
        previous_charged_millicredits=estimate["charged_millicredits"],
        delta_millicredits=450 - estimate["charged_millicredits"], previous_usage_source="prompt_only")


async def test_adjustments_are_exported_with_their_sign(outbox: PgOutbox, ledger: PgLedger,
                                                       db: asyncpg.Connection) -> None:
    await funded(db, ledger)
    await ledger.adjust(ORG, -2_500, "goodwill reversal", "adj-1", "operator")
    await ledger.adjust(ORG, 1_000, "refund", "adj-2", "operator")
    await ledger.adjust(ORG, 1_000, "refund", "adj-2", "operator")  # a replay: no second event
    found = [r for r in await rows(db) if r["code"] == "credit_adjustment"]
    ids = [r["grant_id"] for r in await db.fetch(
        "SELECT id AS grant_id FROM creditgate.grants WHERE kind = 'adjustment' ORDER BY id")]
    assert [(r["transaction_id"], r["p"]["amount_millicredits"], r["p"]["reason"]) for r in found] == [
        (f"adjustment#{ids[0]}", -2_500, "goodwill reversal"), (f"adjustment#{ids[1]}", 1_000, "refund")]


async def test_an_expired_grants_forfeits_are_exported_as_they_happen(outbox: PgOutbox, ledger: PgLedger,
                                                                      db: asyncpg.Connection) -> None:
    """The grant forfeits what is unspent and not held at its expiry, then what a hold it covered releases:
    one `credit_grant_expiry` event per journal entry, with the request that released it."""
    await add_org(db, ORG)
    await add_member(db, ORG, USER)
    expires = datetime.now(UTC) + timedelta(seconds=60)  # the hold (TTL 120 s) outlives the grant
    await ledger.grant(ORG, 5_000, "trial", "g-1", expires, "operator")
    await ledger.reserve(hold(ORG, USER, "req-x", 900))
    await set_clock(db, 61)
    assert await ledger.expire() == (0, 1)
    await ledger.settle(ORG, "req-x", usage(600))
    await set_clock(db, None)
    gid = await db.fetchval("SELECT id FROM creditgate.grants WHERE org_id = $1", ORG)
    found = [(r["code"], r["transaction_id"], r["p"].get("amount_millicredits"), r["p"].get("request_id"))
             for r in await rows(db) if str(r["code"]).startswith("credit_")]
    versions = [v for (v,) in await db.fetch(
        "SELECT version FROM creditgate.journal WHERE org_id = $1 AND kind = 'grant_expiry' ORDER BY version", ORG)]
    assert found == [("credit_grant", f"grant#{gid}", 5_000, None),
                     ("credit_grant_expiry", f"grant_expiry#{gid}#{versions[0]}", 4_100, None),
                     ("credit_grant_expiry", f"grant_expiry#{gid}#{versions[1]}", 300, "req-x")]
    forfeit = [r for r in await rows(db) if r["code"] == "credit_grant_expiry"][0]["p"]
    assert forfeit["expires_at"] == expires.strftime("%Y-%m-%dT%H:%M:%SZ") and forfeit["actor"] == "sweeper"


async def settled(ledger: PgLedger, db: asyncpg.Connection, count: int) -> None:
    await funded(db, ledger, credit=10_000_000)
    await db.execute("DELETE FROM creditgate.export_outbox")  # the grant's event: only usage here
    for i in range(count):
        await ledger.reserve(hold(ORG, USER, f"req-{i}", 100))
        await ledger.settle(ORG, f"req-{i}", usage(50))


async def test_concurrent_claims_share_the_due_events_without_overlap(outbox: PgOutbox, ledger: PgLedger,
                                                                     db: asyncpg.Connection) -> None:
    await settled(ledger, db, 30)
    claims = await asyncio.gather(*(outbox.claim(12, 60.0) for _ in range(4)))
    ids = [e.id for claim in claims for e in claim]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 30
    assert {e.attempts for claim in claims for e in claim} == {1}
    assert await outbox.claim(50, 60.0) == []  # leased: not due again before the lease ends


async def test_a_row_locked_by_another_claimer_is_skipped(outbox: PgOutbox, ledger: PgLedger,
                                                         db: asyncpg.Connection) -> None:
    await settled(ledger, db, 3)
    async with db.transaction():
        locked = await db.fetchval("SELECT id FROM creditgate.export_outbox ORDER BY id LIMIT 1 FOR UPDATE")
        claimed = await outbox.claim(10, 60.0)
    assert locked not in {e.id for e in claimed} and len(claimed) == 2


async def test_failures_retry_then_dead_letter_and_an_operator_retries(outbox: PgOutbox, ledger: PgLedger,
                                                                      db: asyncpg.Connection) -> None:
    await settled(ledger, db, 2)
    first, second = await outbox.claim(10, 60.0)
    await outbox.failed([Failure(first.org_id, first.id, 0.0, 503, "HTTP 503", False),
                         Failure(second.org_id, second.id, 0.0, 400, "HTTP 400", True)])
    again = await outbox.claim(10, 60.0)
    assert [(e.id, e.attempts) for e in again] == [(first.id, 2)]
    dead, has_more = await outbox.dead_letters(10, None)
    assert has_more is False
    assert [(d["id"], d["code"], d["transaction_id"], d["attempts"], d["last_status"], d["last_error"])
            for d in dead] == [(str(second.id), "llm_usage", second.transaction_id, 1, 400, "HTTP 400")]
    assert dead[0]["properties"] == usage_properties(second.transaction_id, 50)
    retried = await outbox.retry(second.id)
    assert retried is not None and (retried["attempts"], retried["dead_at"]) == (0, None)
    assert await outbox.retry(second.id) is None  # no longer a dead letter
    assert await outbox.retry(10**12) is None
    assert [e.id for e in await outbox.claim(10, 60.0)] == [second.id]


async def test_dead_letters_page_newest_first(outbox: PgOutbox, ledger: PgLedger, db: asyncpg.Connection) -> None:
    await settled(ledger, db, 5)
    events = await outbox.claim(10, 60.0)
    await outbox.failed([Failure(e.org_id, e.id, 0.0, None, "timeout", True) for e in events])
    page1, more1 = await outbox.dead_letters(3, None)
    page2, more2 = await outbox.dead_letters(3, page1[-1]["id"])
    assert (more1, more2) == (True, False)
    assert [int(d["id"]) for d in page1 + page2] == sorted((e.id for e in events), reverse=True)


async def test_delivered_rows_are_pruned_after_retention_and_depth_counts_the_rest(
        outbox: PgOutbox, ledger: PgLedger, db: asyncpg.Connection) -> None:
    await settled(ledger, db, 4)
    a, b, c, d = await outbox.claim(10, 60.0)
    await outbox.delivered([(a, 200), (b, 202)])
    await outbox.failed([Failure(c.org_id, c.id, 0.0, 404, "HTTP 404", True)])
    pending, oldest, dead = await outbox.depth()
    assert (pending, dead) == (1, 1) and oldest >= 0.0
    assert await outbox.prune(3600.0) == 0  # delivered just now: kept for the retention
    assert await outbox.prune(0.0) == 2
    assert sorted(r["transaction_id"] for r in await rows(db)) == sorted([c.transaction_id, d.transaction_id])
    await outbox.delivered([(d, 200)])
    await outbox.delivered([(d, 200)])  # a second report of the same delivery changes nothing
    assert (await outbox.depth())[:1] == (0,)
