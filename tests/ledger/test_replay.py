"""The spool's replay against the real ledger: spooled settlements and voids posted once the database
answers, idempotently (a settle that had committed answers already_settled), a hold the sweeper settled
during the outage corrected once by the real usage (never charged twice), entries that can never apply
dropped, the background task adopting a dead process's file, and the last pass at close."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from proxy.ledger.pg import PgLedger
from proxy.ledger.replay import Replayer
from proxy.ledger.spool import Spool
from proxy.ledger.spool_entry import Entry
from proxy.ledger.types import Settlement
from tests.fakes import FakeLedger
from tests.ledger.conftest import ORG, U1, U2, hold, pool_state, set_clock, usage, violations

LEDGER = "0123456789ab"
Outcomes = list[tuple[str, Settlement | None]]


@pytest.fixture
async def spool(tmp_path: Path) -> Any:
    s = Spool(tmp_path, LEDGER)
    await s.open()
    yield s
    await s.close()


def replayer(spool: Spool, ledger: Any, outcomes: Outcomes, **kw: Any) -> Replayer:
    return Replayer(spool, ledger, on_replayed=lambda o, s: outcomes.append((o, s)), **kw)


async def journal(db: asyncpg.Connection, rid: str) -> list[tuple[str, int]]:
    rows = await db.fetch("SELECT kind, amount FROM creditgate.journal WHERE request_id = $1 ORDER BY version", rid)
    return [(r["kind"], r["amount"]) for r in rows]


async def test_spooled_settlements_and_voids_are_posted_and_the_spool_emptied(
    org: PgLedger, db: asyncpg.Connection, spool: Spool
) -> None:
    for rid, user in (("r1", U1), ("r2", U2), ("r3", U1)):
        await org.reserve(hold(ORG, user, rid, 300))
    await spool.append(Entry.of(ORG, "r1", usage(120, prompt=30, completion=12)))
    await spool.append(Entry.of(ORG, "r2", usage(90)))
    await spool.append(Entry.of(ORG, "r3", None))
    outcomes: Outcomes = []
    assert await replayer(spool, org, outcomes).replay_once() is False
    assert outcomes == [("posted", usage(120, prompt=30, completion=12)), ("posted", usage(90)), ("voided", None)]
    assert spool.pending() == [] and spool.path is not None and spool.path.read_bytes() == b""
    assert await pool_state(db, ORG) == (10_000, 210, 0, 0)
    r1 = await org.request(ORG, "r1")
    assert r1 is not None and (r1["status"], r1["prompt_tokens"], r1["completion_tokens"], r1["charged_millicredits"],
                               r1["usage_source"]) == ("settled", 30, 12, 120, "provider")
    r3 = await org.request(ORG, "r3")
    assert r3 is not None and r3["status"] == "voided"
    assert await violations(db) == []


async def test_a_settle_that_had_committed_replays_as_already_settled(
    org: PgLedger, db: asyncpg.Connection, spool: Spool
) -> None:
    await org.reserve(hold(ORG, U1, "r1", 300))
    await org.settle(ORG, "r1", usage(120))  # committed, but the answer was lost with the connection
    await spool.append(Entry.of(ORG, "r1", usage(120)))
    outcomes: Outcomes = []
    await replayer(spool, org, outcomes).replay_once()
    assert outcomes == [("already_settled", usage(120))]
    assert await journal(db, "r1") == [("hold", 300), ("post", 120)]
    assert await pool_state(db, ORG) == (10_000, 120, 0, 0)


async def test_a_hold_swept_during_the_outage_is_corrected_once_by_the_real_usage(
    org: PgLedger, db: asyncpg.Connection, spool: Spool
) -> None:
    """The rule: the sweeper's estimate (checkpoint / prompt_only) is replaced by the spooled real usage
    once, journaled as a correction; the pool is charged the real usage only, never both."""
    await org.reserve(hold(ORG, U1, "r1", 300, prompt=10, in_rate="1", out_rate="2"))
    await org.checkpoint(ORG, "r1", 7)
    await set_clock(db, 121)  # past the hold's expiry: the replica that held it looks dead
    assert await org.expire() == (1, 0)
    swept = await org.request(ORG, "r1")
    assert swept is not None and (swept["usage_source"], swept["charged_millicredits"]) == ("checkpoint", 24)
    real = usage(150, prompt=10, completion=70)
    await spool.append(Entry.of(ORG, "r1", real))
    outcomes: Outcomes = []
    await replayer(spool, org, outcomes).replay_once()
    assert outcomes == [("late_posted", real)]
    row = await org.request(ORG, "r1")
    assert row is not None and (row["status"], row["usage_source"], row["prompt_tokens"], row["completion_tokens"],
                                row["charged_millicredits"]) == ("settled", "provider", 10, 70, 150)
    assert await journal(db, "r1") == [("hold", 300), ("expire", 24), ("correction", 126)]
    assert await pool_state(db, ORG) == (10_000, 150, 0, 0)
    await spool.append(Entry.of(ORG, "r1", real))  # replayed again (an adopter died before its unlink)
    await replayer(spool, org, outcomes).replay_once()
    assert outcomes[1:] == [("already_settled", real)]
    assert await pool_state(db, ORG) == (10_000, 150, 0, 0)
    await set_clock(db, None)
    assert await violations(db) == []


async def test_a_void_the_sweeper_beat_corrects_its_estimate_to_nothing(
    org: PgLedger, db: asyncpg.Connection, spool: Spool
) -> None:
    """A void is spooled only for a request the contract does not charge (here: its reserve's answer was lost,
    so it was answered 503 and never sent). An outage longer than the hold's TTL lets the sweeper charge the
    prompt first; the replayed void then corrects that estimate to nothing, once, keeping the record."""
    await org.reserve(hold(ORG, U1, "r1", 300, prompt=10, in_rate="1", out_rate="2"))
    await set_clock(db, 121)
    assert await org.expire() == (1, 0)
    swept = await org.request(ORG, "r1")
    assert swept is not None and (swept["usage_source"], swept["charged_millicredits"]) == ("prompt_only", 10)
    await spool.append(Entry.of(ORG, "r1", None, {"failure": "reserve_outcome_unknown"}))
    outcomes: Outcomes = []
    await replayer(spool, org, outcomes).replay_once()
    assert outcomes == [("late_posted", None)]
    row = await org.request(ORG, "r1")
    assert row is not None and (row["status"], row["usage_source"], row["model"], row["prompt_tokens"],
                                row["completion_tokens"], row["charged_millicredits"]) == (
        "settled", "estimate", "fake-small", 0, 0, 0)
    assert await journal(db, "r1") == [("hold", 300), ("expire", 10), ("correction", -10)]
    assert await pool_state(db, ORG) == (10_000, 0, 0, 0)
    await spool.append(Entry.of(ORG, "r1", None))  # replayed again: nothing changes
    await replayer(spool, org, outcomes).replay_once()
    assert outcomes[1:] == [("already_settled", None)]
    assert await journal(db, "r1") == [("hold", 300), ("expire", 10), ("correction", -10)]
    await set_clock(db, None)
    assert await violations(db) == []


async def test_a_void_replayed_after_a_real_settlement_changes_nothing(
    org: PgLedger, db: asyncpg.Connection, spool: Spool
) -> None:
    await org.reserve(hold(ORG, U1, "r1", 300))
    await org.settle(ORG, "r1", usage(120))
    await spool.append(Entry.of(ORG, "r1", None))
    outcomes: Outcomes = []
    await replayer(spool, org, outcomes).replay_once()
    assert outcomes == [("voided", None)]
    assert await journal(db, "r1") == [("hold", 300), ("post", 120)]
    assert await pool_state(db, ORG) == (10_000, 120, 0, 0)


async def test_entries_that_can_never_apply_are_dropped_and_logged(
    org: PgLedger, db: asyncpg.Connection, spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    await org.reserve(hold(ORG, U1, "r1", 300))
    await org.settle(ORG, "r1", usage(120))
    await spool.append(Entry.of(ORG, "r1", usage(121)))  # another charge for a settled request
    await spool.append(Entry.of(ORG, "never-held", usage(5)))  # e.g. a failover lost the reserve
    outcomes: Outcomes = []
    with caplog.at_level(logging.ERROR, logger="creditgate.spool"):
        assert await replayer(spool, org, outcomes).replay_once() is False
    assert [o for o, _ in outcomes] == ["conflict", "not_found"]
    assert spool.pending() == []
    assert [m.split(":")[0] for m in caplog.messages] == [
        f"spooled settle of request r1 in org {ORG} cannot be applied (conflict); dropped",
        f"spooled settle of request never-held in org {ORG} cannot be applied (not_found); dropped",
    ]
    assert '"charge":121' in caplog.messages[0]  # the whole entry is in the log, to settle by hand
    assert await pool_state(db, ORG) == (10_000, 120, 0, 0)


async def test_replay_waits_while_the_ledger_is_unavailable(spool: Spool) -> None:
    ledger = FakeLedger(unavailable=3)
    await spool.append(Entry.of(ORG, "r1", usage(120)))
    await spool.append(Entry.of(ORG, "r2", None))
    outcomes: Outcomes = []
    replay = replayer(spool, ledger, outcomes, batch=1)
    assert await replay.replay_once() is True  # r1 unavailable: the pass stops there
    assert await replay.replay_once() is True
    assert await replay.replay_once() is True
    assert (outcomes, len(spool.pending()), ledger.settled) == ([], 2, [])
    assert await replay.replay_once() is False
    assert outcomes == [("posted", usage(120)), ("voided", None)]
    assert ledger.settled == [(ORG, "r1", usage(120))] and ledger.voided == [(ORG, "r2")]
    assert spool.pending() == []


async def test_the_background_task_adopts_a_dead_process_file_and_replays_it(
    org: PgLedger, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await org.reserve(hold(ORG, U1, "r1", 300))
    dead = Spool(tmp_path, LEDGER)
    await dead.open()
    await dead.append(Entry.of(ORG, "r1", usage(77)))
    await dead.close()  # the file stays, its lock free: as SIGKILL leaves it
    survivor = Spool(tmp_path, LEDGER)
    await survivor.open()
    outcomes: Outcomes = []
    replay = replayer(survivor, org, outcomes, min_delay=0.01)
    await replay.open()
    try:
        for _ in range(200):
            if outcomes:
                break
            await asyncio.sleep(0.02)
    finally:
        await replay.close()
        await survivor.close()
    assert outcomes == [("posted", usage(77))]
    assert list(tmp_path.glob("spool-*")) == []  # the dead file adopted, ours removed empty at close
    assert await pool_state(db, ORG) == (10_000, 77, 0, 0)


async def test_the_background_task_retries_with_backoff_until_the_ledger_answers(spool: Spool) -> None:
    ledger = FakeLedger(unavailable=4)
    outcomes: Outcomes = []
    replay = replayer(spool, ledger, outcomes, min_delay=0.01, max_delay=0.05)
    await replay.open()
    try:
        await spool.append(Entry.of(ORG, "r1", usage(5)))
        for _ in range(200):
            if outcomes:
                break
            await asyncio.sleep(0.02)
    finally:
        await replay.close()
    assert outcomes == [("posted", usage(5))] and ledger.unavailable == 0 and spool.pending() == []


async def test_close_makes_one_last_bounded_pass(spool: Spool) -> None:
    ledger = FakeLedger()
    await spool.append(Entry.of(ORG, "r1", usage(5)))
    outcomes: Outcomes = []
    await replayer(spool, ledger, outcomes).close()  # never opened: the last pass still runs
    assert outcomes == [("posted", usage(5))] and spool.pending() == []
    down = FakeLedger(unavailable=10**6)
    await spool.append(Entry.of(ORG, "r2", usage(6)))
    await replayer(spool, down, outcomes, final_seconds=0.5).close()
    assert len(spool.pending()) == 1  # left in the file for the next process
