"""Settle vs estimate vs void on every path, exactly once: success, upstream error, a client that
leaves mid-stream, a cancelled request task, an unavailable ledger, and the stream's checkpoints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from policies.credits import ReserveCredits
from policies.settlement import unavailable
from proxy.config.catalogue import Catalogue
from proxy.config.policy import PolicyConfig
from proxy.errors import ProxyError
from proxy.gateway.context import RequestContext, Usage
from proxy.gateway.tokens import TokenCounter
from proxy.ledger.spool import Spool
from proxy.ledger.types import Settlement, SettleResult
from tests.fakes import FakeLedger
from tests.policies.policy_support import (
    MESSAGES,
    PRICES,
    Records,
    admitted,
    answered,
    credits_for,
    expected,
    run,
)


@pytest.fixture
def records() -> Records:
    return []


@pytest.fixture
def credits(
    ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, records: Records
) -> ReserveCredits:
    return credits_for(ledger, policy, catalogue, counter, records, checkpoint_seconds=0.05)


async def chat(policy: PolicyConfig, catalogue: Catalogue, *, stream: bool = False) -> RequestContext:
    body: dict[str, Any] = {"model": "fake-medium", "messages": MESSAGES, "stream": stream}
    return await admitted(policy, catalogue, body)


async def test_upstream_error_before_output_voids(
    credits: ReserveCredits, ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue, records: Records
) -> None:
    ctx = await chat(policy, catalogue)

    async def error(ctx: RequestContext) -> None:
        ctx.upstream_status, ctx.failure = 429, "rate_limited"
        raise ProxyError.rate_limited(1)

    with pytest.raises(ProxyError):
        await run(credits, ctx, error)
    assert (ledger.voided, ledger.settled, records) == ([("org_a", "req_test")], [], [("voided", None)])
    assert "X-Credits-Charged" not in ctx.response_headers


async def test_upstream_unreachable_voids(
    credits: ReserveCredits, ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue
) -> None:
    ctx = await chat(policy, catalogue, stream=True)

    async def unreachable(ctx: RequestContext) -> None:
        ctx.failure = "upstream_unreachable"

    await run(credits, ctx, unreachable)
    assert (ledger.voided, ledger.settled) == ([("org_a", "req_test")], [])


async def test_client_leaving_mid_stream_is_an_estimate(
    credits: ReserveCredits, ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter
) -> None:
    ctx = await chat(policy, catalogue, stream=True)
    pieces = ["One", ", two", ", three", " and"]

    async def leaves(ctx: RequestContext) -> None:
        ctx.upstream_status, ctx.response_started = 200, True
        for piece in pieces:
            ctx.meter.feed(piece)
        ctx.failure = "client_disconnected"

    await run(credits, ctx, leaves)
    completion = counter.count("".join(pieces))
    ((_, _, settlement),) = ledger.settled
    assert settlement == Settlement(
        ctx.prompt_tokens, completion, expected(PRICES["fake-medium"], ctx.prompt_tokens, completion, "starter",
                                                "balanced"),
        expected(PRICES["fake-medium"], ctx.prompt_tokens, completion, "free", None), "estimate", "fake-medium",
        "openai", None,
    )
    assert completion == 6 and ledger.voided == []


async def test_an_estimate_never_counts_more_output_than_the_hold_was_sized_for(
    credits: ReserveCredits, ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter
) -> None:
    """The provider stops at the output cap; counting its chunks offline can read more tokens than it sent
    (found by `make chaos`: a stream cut near its cap was counted at twice the cap and charged above its hold).
    The estimate and the checkpoints are clamped to the cap times n, so they stay within the hold."""
    body: dict[str, Any] = {"model": "fake-medium", "messages": MESSAGES, "stream": True, "max_tokens": 3, "n": 2}
    ctx = await admitted(policy, catalogue, body)
    pieces = [" w12"] * 10  # o200k reads each as two tokens: 20 counted, 6 the most the provider could send

    async def breaks(ctx: RequestContext) -> None:
        ctx.upstream_status, ctx.response_started = 200, True
        for piece in pieces:
            ctx.meter.feed(piece)
        await asyncio.sleep(0.12)  # a checkpoint or two while it streams
        ctx.failure = "upstream_failed"

    await run(credits, ctx, breaks)
    assert counter.count("".join(pieces)) == 20 and ctx.output_bound == 6
    ((_, _, settlement),) = ledger.settled
    assert (settlement.usage_source, settlement.completion_tokens) == ("estimate", 6)
    assert settlement.charge == expected(PRICES["fake-medium"], ctx.prompt_tokens, 6, "starter", "balanced")
    assert settlement.charge <= ledger.holds[0].amount
    assert ledger.checkpoints and {c for _, _, c in ledger.checkpoints} == {6}


async def test_stream_broken_before_any_chunk_charges_the_prompt(
    credits: ReserveCredits, ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue
) -> None:
    ctx = await chat(policy, catalogue, stream=True)

    async def broken(ctx: RequestContext) -> None:
        ctx.upstream_status, ctx.response_started, ctx.failure = 200, True, "upstream_failed"

    await run(credits, ctx, broken)
    settlement = ledger.settled[0][2]
    assert (settlement.usage_source, settlement.prompt_tokens, settlement.completion_tokens) == (
        "estimate", ctx.prompt_tokens, 0)


async def test_answer_without_usage_is_still_charged(
    credits: ReserveCredits, ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue
) -> None:
    ctx = await chat(policy, catalogue)
    await run(credits, ctx, answered(None))  # settled before the body is sent: response_started unset
    assert ledger.settled[0][2].usage_source == "estimate" and ledger.voided == []


async def test_an_early_close_then_the_cleanup_settles_once(
    credits: ReserveCredits, ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue, records: Records
) -> None:
    ctx = await chat(policy, catalogue)

    async def twice(ctx: RequestContext) -> None:
        await answered(Usage(10, 20))(ctx)
        await ctx.cleanup.aclose()

    await run(credits, ctx, twice)
    assert len(ledger.settled) == 1 and [r[0] for r in records] == ["posted"]


async def test_cancelled_request_task_still_settles_once(
    credits: ReserveCredits, ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue
) -> None:
    ctx = await chat(policy, catalogue, stream=True)
    ledger.settle_delay = 0.2  # the settlement is in flight when the cancellation arrives
    streaming = asyncio.Event()

    async def stream_forever(ctx: RequestContext) -> None:
        ctx.upstream_status, ctx.response_started = 200, True
        ctx.meter.feed("partial answer")
        ctx.usage = Usage(11, 3)
        streaming.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(run(credits, ctx, stream_forever))
    await streaming.wait()
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()  # a second cancellation while the shielded settlement runs
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [s.usage_source for _, _, s in ledger.settled] == ["provider"]
    assert ledger.settled[0][2].completion_tokens == 3


async def test_unavailable_ledger_is_retried(
    credits: ReserveCredits, ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue
) -> None:
    ledger.unavailable = 3
    ctx = await chat(policy, catalogue)
    await run(credits, ctx, answered(Usage(10, 20)))
    assert len(ledger.settled) == 1 and ledger.unavailable == 0


async def test_ledger_down_for_good_is_logged_and_left_to_the_sweeper(
    credits: ReserveCredits, ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue, records: Records,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger.unavailable = 10**6
    ctx = await chat(policy, catalogue)
    started = asyncio.get_running_loop().time()
    with caplog.at_level(logging.ERROR, logger="creditgate.credits"):
        await run(credits, ctx, answered(Usage(10, 20)))  # the answer is not lost to an exception
    assert 1.0 <= asyncio.get_running_loop().time() - started < 10  # retry_seconds=2 in these tests
    assert ledger.settled == [] and [r[0] for r in records] == ["failed"]
    assert caplog.messages == [
        "settlement failed; the sweeper will settle request req_test at expiry: ProxyError"
    ]


async def test_stream_checkpoints_while_it_runs(
    credits: ReserveCredits, ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter
) -> None:
    ctx = await chat(policy, catalogue, stream=True)

    async def slow_stream(ctx: RequestContext) -> None:
        ctx.upstream_status, ctx.response_started = 200, True
        for word in ["alpha", " beta", " gamma", " delta"]:  # one token each
            ctx.meter.feed(word)
            await asyncio.sleep(0.06)
        ctx.usage = Usage(9, 4)

    await run(credits, ctx, slow_stream)
    assert len(ledger.checkpoints) >= 2
    counts = [c for _, _, c in ledger.checkpoints]
    assert counts == sorted(counts) and set(counts) <= {1, 2, 3, 4}
    checkpoints_at_end = len(ledger.checkpoints)
    await asyncio.sleep(0.15)
    assert len(ledger.checkpoints) == checkpoints_at_end  # the renewer stopped with the request


async def test_slow_non_stream_requests_keep_their_hold_alive(
    credits: ReserveCredits, ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue
) -> None:
    ctx = await chat(policy, catalogue)

    async def slow(ctx: RequestContext) -> None:
        await asyncio.sleep(0.15)
        await answered(Usage(1, 1))(ctx)

    await run(credits, ctx, slow)
    assert len(ledger.checkpoints) >= 1 and {c for _, _, c in ledger.checkpoints} == {0}


async def test_images_served_without_a_count_are_charged_as_asked(
    credits: ReserveCredits, ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue
) -> None:
    body = {"model": "fake-image", "prompt": "a cat", "n": 2}
    ctx = await admitted(policy, catalogue, body, route="images/generations", tier="professional")

    async def no_count(ctx: RequestContext) -> None:
        ctx.upstream_status, ctx.usage = 200, Usage(12, 0)  # some image APIs report token usage only
        await ctx.cleanup.aclose()

    await run(credits, ctx, no_count)
    settlement = ledger.settled[0][2]
    assert (settlement.usage_source, settlement.charge, settlement.list_price) == ("estimate", 128_000, 80_000)


async def test_non_stream_client_gone_past_the_drain_bound_is_charged_the_prompt(
    credits: ReserveCredits, ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue
) -> None:
    """The client left and LiteLLM's answer did not come within the drain bound: LiteLLM still runs the
    call to completion, so the request settles as an estimate of its prompt, never as a free void."""
    ctx = await chat(policy, catalogue)

    async def gone(ctx: RequestContext) -> None:
        ctx.failure = "client_disconnected"  # upstream_status never arrived
        raise ProxyError.upstream_timeout()

    with pytest.raises(ProxyError):
        await run(credits, ctx, gone)
    settlement = ledger.settled[0][2]
    assert (settlement.usage_source, settlement.prompt_tokens, settlement.completion_tokens, ledger.voided) == (
        "estimate", ctx.prompt_tokens, 0, [])
    assert settlement.charge == expected(PRICES["fake-medium"], ctx.prompt_tokens, 0, "starter", "balanced")


# ------------------------------------------------------------------ the spool (proxy/ledger/spool.py)


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    s = Spool(tmp_path, "0123456789ab", retry_seconds=0.2)
    await s.open()
    yield s
    await s.close()


def spooling(ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter,
             records: Records, spool: Spool) -> ReserveCredits:
    return credits_for(ledger, policy, catalogue, counter, records, spool=spool)


async def test_ledger_down_with_a_spool_spools_the_settlement_and_answers(
    ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, records: Records,
    spool: Spool, caplog: pytest.LogCaptureFixture,
) -> None:
    ledger.unavailable = 10**6
    credits = spooling(ledger, policy, catalogue, counter, records, spool)
    ctx = await chat(policy, catalogue)
    counter.warm()  # the first tokenization loads the encoding: not what is timed here
    started = asyncio.get_running_loop().time()
    with caplog.at_level(logging.WARNING, logger="creditgate.credits"):
        await run(credits, ctx, answered(Usage(10, 20)))
    # retried within the spool's window (0.2 s), not the ledger's 2 s: a non-stream client is not held for the
    # whole outage
    assert 0.1 <= asyncio.get_running_loop().time() - started < 1.0
    charge = expected(PRICES["fake-medium"], 10, 20, "starter", "balanced")
    settlement = Settlement(10, 20, charge, expected(PRICES["fake-medium"], 10, 20, "free", None), "provider",
                            "fake-medium", "openai", None)
    assert records == [("spooled", settlement)] and ledger.settled == []
    assert {k: v for k, v in ctx.response_headers.items() if k.startswith("X-Credits-")} == {
        "X-Credits-Held": str(ctx.hold.amount if ctx.hold else None), "X-Credits-Charged": str(charge)}
    ((entry,),) = [spool.pending()]
    assert (entry.op, entry.org_id, entry.request_id, entry.settlement) == ("settle", "org_a", "req_test", settlement)
    context = orjson.loads(entry.line)["context"]
    assert context == {
        "user_id": "usr_1", "key_id": "key_1", "route": "chat/completions", "stream": False, "failure": None,
        "byok": False, "held_millicredits": ctx.hold.amount if ctx.hold else None,
        "price": {"input_cost_per_token": PRICES["fake-medium"][0], "output_cost_per_token": PRICES["fake-medium"][1],
                  "output_cost_per_image": None},
        "factor": "0.35", "credits_per_usd": "1000",
    }
    assert caplog.messages == ["ledger unavailable: the settlement of request req_test is spooled for replay"]


async def test_a_void_the_ledger_cannot_take_is_spooled_too(
    ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, records: Records,
    spool: Spool,
) -> None:
    ledger.unavailable = 10**6
    credits = spooling(ledger, policy, catalogue, counter, records, spool)
    ctx = await chat(policy, catalogue, stream=True)

    async def unreachable(ctx: RequestContext) -> None:
        ctx.failure = "upstream_unreachable"

    await run(credits, ctx, unreachable)
    assert records == [("spooled", None)] and "X-Credits-Charged" not in ctx.response_headers
    assert [(e.op, e.request_id, e.settlement) for e in spool.pending()] == [("void", "req_test", None)]


async def test_a_spool_that_cannot_be_written_leaves_the_hold_to_the_sweeper(
    ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, records: Records,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    ledger.unavailable = 10**6
    closed = Spool(tmp_path, "0123456789ab", retry_seconds=0.1)  # never opened
    credits = spooling(ledger, policy, catalogue, counter, records, closed)
    ctx = await chat(policy, catalogue)
    with caplog.at_level(logging.ERROR, logger="creditgate.credits"):
        await run(credits, ctx, answered(Usage(10, 20)))
    assert [r[0] for r in records] == ["failed"] and "X-Credits-Charged" not in ctx.response_headers
    assert caplog.messages == [
        "could not spool the settlement of request req_test: RuntimeError",
        "settlement failed; the sweeper will settle request req_test at expiry: ProxyError",
    ]


async def test_only_an_unreachable_ledger_is_spooled(
    ledger: FakeLedger, policy: PolicyConfig, catalogue: Catalogue, counter: TokenCounter, records: Records,
    spool: Spool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def conflict(*_: object) -> SettleResult:
        raise ProxyError(409, "conflict_error", "request_id_in_use", "settled with another charge")

    monkeypatch.setattr(ledger, "settle", conflict)
    credits = spooling(ledger, policy, catalogue, counter, records, spool)
    ctx = await chat(policy, catalogue)
    await run(credits, ctx, answered(Usage(10, 20)))
    assert [r[0] for r in records] == ["failed"] and spool.pending() == []
    assert unavailable(ProxyError.ledger_unavailable()) and unavailable(ConnectionRefusedError())
    assert not unavailable(ProxyError.not_found("request_not_found", "x")) and not unavailable(ValueError())
