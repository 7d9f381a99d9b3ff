"""The delivery loop against a real receiver (tests/export/receiver.py, uvicorn on 127.0.0.1), fed by the
real ledger on the real PostgreSQL: failures, timeouts and lost acknowledgements are retried and the
deduplicating receiver counts each event exactly once; a 4xx and too many attempts dead-letter; an
operator's retry delivers; a settlement wakes the loop at once (NOTIFY), not at the next poll; without an
export URL only the alerts are counted."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from proxy.config.settings import Secret
from proxy.export.deliver import ExportConfig, Exporter
from proxy.export.outbox import PgOutbox
from proxy.ledger.pg import PgLedger
from proxy.ops.metrics import Metrics
from tests.ledger.conftest import funded_member, hold, set_clock, usage
from tests.waiting import until

from .receiver import Receiver, serving

ORG, USER = "org_deliver", "usr_deliver"
SECRET = Secret("whsec-deliver-" + "k" * 20)


def config(url: str | None, **changes: float) -> ExportConfig:
    values: dict[str, float] = {"timeout_seconds": 0.5, "max_attempts": 5, "backoff_seconds": 0.05,
                                "backoff_max_seconds": 0.2, "poll_seconds": 0.1, "housekeeping_seconds": 0.1,
                                "batch": 100}
    values |= changes
    return ExportConfig(url=Secret(url) if url else None, secret=SECRET, timeout_seconds=values["timeout_seconds"],
                        max_attempts=int(values["max_attempts"]), backoff_seconds=values["backoff_seconds"],
                        backoff_max_seconds=values["backoff_max_seconds"], poll_seconds=values["poll_seconds"],
                        housekeeping_seconds=values["housekeeping_seconds"], batch=int(values["batch"]))


async def setup(db: asyncpg.Connection, ledger: PgLedger, requests: int) -> None:
    await funded_member(db, ledger, ORG, USER, 1_000_000, key="seed-1")
    for i in range(requests):
        await ledger.reserve(hold(ORG, USER, f"req-{i}", 900))
        await ledger.settle(ORG, f"req-{i}", usage(100 + i))


async def until_settled(db: asyncpg.Connection, deadline: float = 20.0) -> None:
    """Until no event is waiting (every one delivered or dead-lettered)."""
    async def drained() -> bool:
        return not await db.fetchval("SELECT count(*) FROM creditgate.export_outbox "
                                     "WHERE delivered_at IS NULL AND dead_at IS NULL")
    await until(drained, deadline, "the outbox drained", every=0.05)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def until_sampled(metrics: list[Metrics], name: str, expected: float, **labels: str) -> None:
    """Until the replicas' samples sum to `expected`: a cycle counts its writes once each returns and the
    housekeeping sets its gauges on its own beat, so the metrics can show a moment later what the outbox
    already shows. Never close an exporter before its counters caught up."""
    await until(lambda: sum(sample(m, name, **labels) for m in metrics) == expected, 5, f"{name}{labels} {expected}")


async def test_failures_timeouts_and_lost_acks_are_counted_once(outbox: PgOutbox, ledger: PgLedger,
                                                               db: asyncpg.Connection) -> None:
    await setup(db, ledger, 4)
    receiver = Receiver(SECRET, {"req-1": ["fail"], "req-2": ["stall"], "req-3": ["fail", "fail"]})
    metrics = Metrics()
    async with serving(receiver):
        exporter = Exporter(outbox, metrics, config(receiver.url))
        await exporter.open()
        try:
            await until_settled(db)
            await until_sampled([metrics], "creditgate_export_events_total", 5, outcome="delivered")
            await until_sampled([metrics], "creditgate_export_events_total", 4, outcome="retried")
        finally:
            await exporter.close()
    grant = await db.fetchval("SELECT 'grant#' || id FROM creditgate.grants")
    expected = {grant, "req-0", "req-1", "req-2", "req-3"}
    assert {tid for _, tid in receiver.kept} == expected and len(receiver.kept) == 5
    assert {tid: receiver.attempts(tid) for tid in expected} == {
        grant: 1, "req-0": 1, "req-1": 2, "req-2": 2, "req-3": 3}
    assert all(d.signed for d in receiver.deliveries)
    assert all(d.headers["idempotency-key"] == d.transaction_id for d in receiver.deliveries)
    usage_event = receiver.kept[(ORG, "req-2")]
    assert (usage_event["code"], usage_event["properties"]["charged_millicredits"]) == ("llm_usage", 102)
    # the two copies of req-2 the receiver saw are the same bytes apart from the signature's time
    first, second = (d.event for d in receiver.deliveries if d.transaction_id == "req-2")
    assert first == second
    assert await db.fetchval("SELECT count(*) FROM creditgate.export_outbox WHERE delivered_at IS NOT NULL") == 5
    assert sample(metrics, "creditgate_export_events_total", outcome="delivered") == 5
    assert sample(metrics, "creditgate_export_events_total", outcome="retried") == 4
    assert sample(metrics, "creditgate_export_events_total", outcome="dead_lettered") == 0
    assert sample(metrics, "creditgate_export_delay_seconds_count") == 5


async def test_two_replicas_deliver_each_event_once_in_the_normal_case(pool: asyncpg.Pool, outbox: PgOutbox,
                                                                        ledger: PgLedger,
                                                                        db: asyncpg.Connection) -> None:
    await setup(db, ledger, 120)
    receiver = Receiver(SECRET)
    metrics = [Metrics(), Metrics()]
    async with serving(receiver):
        replicas = [Exporter(PgOutbox(pool), m, config(receiver.url, batch=10)) for m in metrics]
        for replica in replicas:
            await replica.open()
        try:
            await until_settled(db)
            await until_sampled(metrics, "creditgate_export_events_total", 121, outcome="delivered")
        finally:
            for replica in replicas:
                await replica.close()
    assert len(receiver.deliveries) == len(receiver.kept) == 121  # the grant and 120 settlements, once each
    shares = [sample(m, "creditgate_export_events_total", outcome="delivered") for m in metrics]
    assert sum(shares) == 121


async def test_a_4xx_and_too_many_attempts_dead_letter_and_a_retry_delivers(
        outbox: PgOutbox, ledger: PgLedger, db: asyncpg.Connection) -> None:
    await setup(db, ledger, 2)
    receiver = Receiver(SECRET, {"req-0": ["reject"], "req-1": ["fail"] * 3})
    metrics = Metrics()
    async with serving(receiver):
        exporter = Exporter(outbox, metrics, config(receiver.url, max_attempts=3))
        await exporter.open()
        try:
            await until_settled(db)
            dead, _ = await outbox.dead_letters(10, None)
            assert sorted((d["transaction_id"], d["attempts"], d["last_status"], d["last_error"]) for d in dead) == [
                ("req-0", 1, 400, "HTTP 400"), ("req-1", 3, 500, "HTTP 500")]
            await until_sampled([metrics], "creditgate_export_dead_letters", 2)  # housekeeping's gauge
            assert sample(metrics, "creditgate_export_events_total", outcome="dead_lettered") == 2
            for d in dead:
                assert await outbox.retry(int(d["id"])) is not None
            await until_settled(db)
        finally:
            await exporter.close()
    assert {tid: receiver.attempts(tid) for tid in ("req-0", "req-1")} == {"req-0": 2, "req-1": 4}
    assert {tid for _, tid in receiver.kept} >= {"req-0", "req-1"}
    assert await outbox.dead_letters(10, None) == ([], False)


async def test_a_receiver_summing_usage_and_corrections_gets_the_final_charge(
        outbox: PgOutbox, ledger: PgLedger, db: asyncpg.Connection) -> None:
    await setup(db, ledger, 0)
    await ledger.reserve(hold(ORG, USER, "late-1", 900))
    await set_clock(db, 200)  # past the TTL: the sweeper settles an estimate, then the real usage arrives
    await ledger.expire()
    await ledger.settle(ORG, "late-1", usage(333))
    await set_clock(db, None)
    await ledger.adjust(ORG, 500, "refund", "refund-1", "operator")
    receiver = Receiver(SECRET, {"late-1#correction": ["fail"]})
    async with serving(receiver):
        exporter = Exporter(outbox, Metrics(), config(receiver.url))
        await exporter.open()
        try:
            await until_settled(db)
        finally:
            await exporter.close()
    estimate, correction = receiver.kept[(ORG, "late-1")], receiver.kept[(ORG, "late-1#correction")]
    assert (estimate["code"], estimate["properties"]["estimated"]) == ("llm_usage", True)
    assert correction["code"] == "llm_usage_correction"
    assert correction["properties"]["corrects"] == "late-1"
    assert estimate["properties"]["charged_millicredits"] + correction["properties"]["delta_millicredits"] == 333
    assert correction["properties"]["charged_millicredits"] == 333
    (refund,) = [e for e in receiver.kept.values() if e["code"] == "credit_adjustment"]
    assert (refund["properties"]["amount_millicredits"], refund["properties"]["reason"]) == (500, "refund")
    assert receiver.attempts("late-1#correction") == 2


async def test_a_settlement_wakes_the_loop_before_the_next_poll(outbox: PgOutbox, ledger: PgLedger,
                                                               db: asyncpg.Connection) -> None:
    await setup(db, ledger, 0)
    receiver = Receiver(SECRET)
    async with serving(receiver):
        exporter = Exporter(outbox, Metrics(), config(receiver.url, poll_seconds=60.0, housekeeping_seconds=60.0))
        await exporter.open()
        try:
            await until_settled(db)  # the grant's event, delivered on start
            delays = []
            for i in range(5):
                await ledger.reserve(hold(ORG, USER, f"wake-{i}", 900))
                settled_at = time.time()
                await ledger.settle(ORG, f"wake-{i}", usage(10))
                end = time.monotonic() + 10
                while receiver.attempts(f"wake-{i}") == 0:
                    assert time.monotonic() < end, "not delivered within 10 s although the poll is 60 s"
                    await asyncio.sleep(0.005)
                delays.append(receiver.deliveries[-1].at - settled_at)
        finally:
            await exporter.close()
    print(f"delivery delay after settle: {sorted(round(d * 1000, 1) for d in delays)} ms")


async def test_a_lost_listening_connection_is_replaced_at_once(outbox: PgOutbox, ledger: PgLedger,
                                                                db: asyncpg.Connection,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    await setup(db, ledger, 0)
    receiver = Receiver(SECRET)
    listening = "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND datname = current_database()"
    async with serving(receiver):
        exporter = Exporter(outbox, Metrics(), config(receiver.url, poll_seconds=60.0, housekeeping_seconds=60.0))
        await exporter.open()
        try:
            await until_settled(db)
            first = await db.fetchval(listening)
            await db.execute("SELECT pg_terminate_backend($1)", first)
            end = time.monotonic() + 10
            while (again := await db.fetchval(listening)) in (None, first):
                assert time.monotonic() < end, "not listening again within 10 s although the poll is 60 s"
                await asyncio.sleep(0.02)
            await ledger.reserve(hold(ORG, USER, "after-loss", 900))
            await ledger.settle(ORG, "after-loss", usage(10))
            while receiver.attempts("after-loss") == 0:
                assert time.monotonic() < end, "not delivered after the listening connection was replaced"
                await asyncio.sleep(0.01)
        finally:
            await exporter.close()
    assert again != first
    assert [r.getMessage() for r in caplog.records if r.name == "creditgate.export"] == []  # no failure path


async def test_without_an_export_url_only_alerts_are_counted(pool: asyncpg.Pool, ledger: PgLedger,
                                                             db: asyncpg.Connection) -> None:
    await funded_member(db, ledger, ORG, USER, 1_000_000, limit=1_000, key="seed-1")
    metrics = Metrics()
    exporter = Exporter(PgOutbox(pool), metrics, config(None))
    await exporter.open()
    try:
        await ledger.reserve(hold(ORG, USER, "r1", 900))
        await ledger.settle(ORG, "r1", usage(850))
        end = time.monotonic() + 10
        while sample(metrics, "creditgate_budget_alerts_total", scope="allocation", threshold="80") == 0:
            assert time.monotonic() < end
            await asyncio.sleep(0.05)
    finally:
        await exporter.close()
    assert sample(metrics, "creditgate_budget_alerts_total", scope="allocation", threshold="50") == 1
    assert sample(metrics, "creditgate_budget_alerts_total", scope="allocation", threshold="100") == 0
    assert await db.fetchval("SELECT enabled FROM creditgate.export_settings") is False
    assert await db.fetchval("SELECT count(*) FROM creditgate.export_outbox") == 0
