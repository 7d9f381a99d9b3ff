"""LiteLLM and the provider failing under a billed request, through the real stack: every admitted request
ends in exactly one settlement with the right usage source, and each hold is resolved by its own request
before it expires (none is left to the sweeper); `creditgate verify` stays clean.

- nothing served (an error before the first byte, a timeout before LiteLLM answered): the contract's error,
  the hold voided, no usage record;
- a stream broken after its first byte (the provider hangs, drops the connection, fails mid-answer; LiteLLM
  is SIGKILLed): the final `data: {"error": ...}` event without `[DONE]`, settled `estimate` = the prompt as
  counted plus exactly what the client received;
- a provider that ends a stream early but cleanly: LiteLLM completes the stream itself, with usage it counted,
  which is what is settled (`provider`).

The fake provider's fault controls (devstack/fake_provider.py) reach it through the shipped policy file's
`forward_params`. The gateway waits at most 1.5 s for each read from LiteLLM (CREDITGATE_UPSTREAM_TIMEOUT_SECONDS).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from devstack import services
from devstack.stack import gateway_env, migrate
from proxy.gateway.tokens import TokenCounter
from tests.e2e.conftest import Gateway, Member, make_member, start_gateway
from tests.e2e.test_billing import expected_charge
from tests.e2e.test_sigterm import events, in_flight_at_provider, ledger_of, pending_holds, streamed_text, verify

MESSAGES = [{"role": "user", "content": "what could possibly go wrong"}]
PROMPT = TokenCounter().prompt_tokens("chat/completions", {"messages": MESSAGES})
TIMEOUT = 1.5


def error(status: int, code: str) -> tuple[int, dict[str, Any]]:
    messages = {"upstream_timeout": ("upstream_error", "The model service did not answer in time."),
                "upstream_failed": ("upstream_error", "The model service failed to answer."),
                "upstream_unreachable": ("upstream_error", "The model service is unreachable.")}
    type_, message = messages[code]
    return status, {"error": {"message": message, "type": type_, "param": None, "code": code}}


@pytest.fixture(scope="module")
def faulty(pg: services.Service, redis_server: services.Service, litellm: services.Service,
           fake_provider: services.Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway in front of the session's LiteLLM on its own database, waiting at most TIMEOUT per read."""
    database = services.create_database(pg.url, "e2e_faults")
    migrate(database)
    gateway = start_gateway(pg, redis_server, litellm, fake_provider, name="e2e_faults", database_url=database,
                            env=_env(database, redis_server, litellm, fake_provider, tmp_path_factory.mktemp("f")))
    yield gateway
    gateway.stop()


def _env(database: str, redis_server: services.Service, litellm: services.Service,
         fake_provider: services.Service, tmp: Path, timeout: float = TIMEOUT) -> dict[str, str]:
    """No unready grace: nothing routes by readiness here, so stopping the gateway takes no time."""
    config = services.render_litellm_config(fake_provider.url, tmp / "litellm_config.yaml")
    return gateway_env(database, redis_server.url, litellm.url, litellm_config=config, extra={
        "CREDITGATE_UPSTREAM_TIMEOUT_SECONDS": str(timeout), "CREDITGATE_UNREADY_GRACE_SECONDS": "0",
        "CREDITGATE_SPOOL_DIR": str(tmp / "spool")})


class Caller:
    """One member's raw HTTP calls to one gateway; request ids are unique across the session."""

    def __init__(self, gateway: Gateway, member: Member) -> None:
        self.client = httpx.AsyncClient(base_url=gateway.url, timeout=60,
                                        headers={"authorization": f"Bearer {member.key}"})
        self.run = secrets.token_hex(3)

    def rid(self, name: str) -> str:
        return f"{self.run}-{name}"

    async def answer(self, name: str, **controls: Any) -> httpx.Response:
        body = {"model": "fake-medium", "messages": MESSAGES, "fake_tag": self.rid(name), **controls}
        return await self.client.post("/v1/chat/completions", json=body, headers={"x-request-id": self.rid(name)})

    async def stream(self, name: str, **controls: Any) -> tuple[int, bytes]:
        body = {"model": "fake-medium", "messages": MESSAGES, "stream": True, "fake_tag": self.rid(name), **controls}
        async with self.client.stream("POST", "/v1/chat/completions", json=body,
                                      headers={"x-request-id": self.rid(name)}) as resp:
            return resp.status_code, b"".join([chunk async for chunk in resp.aiter_raw()])

    async def close(self) -> None:
        await self.client.aclose()


def broken_stream(raw: bytes, code: str) -> tuple[str, int]:
    """A stream that ended with the gateway's final error event `code` and no [DONE]: (text, chunks) received."""
    assert b"[DONE]" not in raw
    assert orjson.loads(events(raw)[-1]) == error(0, code)[1]
    assert b"litellm" not in raw.lower() and b"fake_midstream_error" not in raw
    return streamed_text(raw)


def estimate(text: str, chunks: int) -> tuple[str, int, int]:
    """The settlement of a broken stream: the prompt as counted plus what was streamed, counted."""
    return "estimate", PROMPT, max(TokenCounter().count(text), chunks)


async def assert_settled_once(dsn: str, org_id: str, expected: dict[str, tuple[str, int, int] | None]) -> None:
    """Each request id: None = voided, no usage record; else exactly one usage record (source, prompt,
    completion) charged by the contract's formula. Every hold was resolved before its expiry; nothing is
    pending anywhere; `creditgate verify` is clean."""
    deadline = time.monotonic() + 10  # a stream settles after its last byte, an error after its answer
    while "pending" in (holds := (await ledger_of(dsn, org_id))[0]).values() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    holds, usage = await ledger_of(dsn, org_id)
    assert holds == {rid: "voided" if want is None else "posted" for rid, want in expected.items()}
    assert sorted(usage) == sorted(rid for rid, want in expected.items() if want is not None)
    for rid, want in expected.items():
        if want is None:
            continue
        assert len(usage[rid]) == 1, rid
        row = usage[rid][0]
        assert (row["usage_source"], row["prompt_tokens"], row["completion_tokens"]) == want, rid
        assert row["charged"] == expected_charge("fake-medium", "starter", Decimal("0.25"), want[1], want[2])
    conn = await asyncpg.connect(dsn)
    try:
        late = await conn.fetchval("SELECT count(*) FROM creditgate.holds WHERE org_id = $1 AND "
                                   "(resolved_at IS NULL OR resolved_at > expires_at)", org_id)
    finally:
        await conn.close()
    assert late == 0
    assert await pending_holds(dsn) == 0
    audit = verify(dsn)
    assert (audit.returncode, audit.stdout.strip()) == (0, "verify: all ledger invariants hold")


async def provider_stream(provider: str, tag: str, timeout: float = 5.0) -> dict[str, Any]:
    """The fake provider's record of a stream once its connection is over."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            fate: dict[str, Any] = (await http.get(f"{provider}/_streams")).json().get(tag) or {}
            if fate.get("closed_early") or fate.get("finished") or time.monotonic() > deadline:
                return fate
            await asyncio.sleep(0.05)


async def test_a_slow_provider_is_504_and_voided_before_the_first_byte_and_an_estimate_after_it(
    faulty: Gateway, fake_provider: services.Service,
) -> None:
    member = make_member(faulty)
    call = Caller(faulty, member)
    try:
        slow = await call.answer("slow", fake_stall_ms=3000)
        slow_stream = await call.stream("slow-stream", fake_stall_ms=3000)  # LiteLLM waits for the provider
        hung = await call.stream("hung", fake_hang_after=3, fake_chunks=10)
    finally:
        await call.close()
    assert (slow.status_code, slow.json()) == error(504, "upstream_timeout")
    assert (slow_stream[0], orjson.loads(slow_stream[1])) == error(504, "upstream_timeout")
    assert hung[0] == 200
    text, chunks = broken_stream(hung[1], "upstream_timeout")
    assert (text, chunks) == ("Hello w1 w2", 3)
    fate = await provider_stream(fake_provider.url, call.rid("hung"))
    assert fate["hung"] and fate["closed_early"] and fate["chunks_sent"] == 3  # our give-up reached the provider
    await assert_settled_once(faulty.env["CREDITGATE_DATABASE_URL"], member.org_id, {
        call.rid("slow"): None, call.rid("slow-stream"): None, call.rid("hung"): estimate(text, chunks)})


async def test_a_failing_provider_charges_nothing_and_a_broken_stream_charges_what_was_streamed(
    faulty: Gateway,
) -> None:
    member = make_member(faulty)
    call = Caller(faulty, member)
    try:
        statuses = [await call.answer("500", fake_status=500), await call.answer("503", fake_status=503)]
        status_stream = await call.stream("502-stream", fake_status=502)
        died = await call.answer("died", fake_fail_after=0, fake_chunks=2)
        dropped = await call.stream("dropped", fake_fail_after=3, fake_chunks=10, fake_delay_ms=20)
        failed = await call.stream("failed", fake_error_after=4, fake_chunks=10)
        ended = await call.stream("ended", fake_end_after=3, fake_chunks=10, stream_options={"include_usage": True})
    finally:
        await call.close()
    assert [(r.status_code, r.json()) for r in statuses] == [error(502, "upstream_failed")] * 2
    assert (status_stream[0], orjson.loads(status_stream[1])) == error(502, "upstream_failed")
    assert (died.status_code, died.json()) == error(502, "upstream_failed")
    assert dropped[0] == failed[0] == 200
    dropped_seen = broken_stream(dropped[1], "upstream_failed")
    failed_seen = broken_stream(failed[1], "upstream_failed")
    assert (dropped_seen[1], failed_seen[1]) == (3, 4)
    # LiteLLM completes a stream the provider ended early: a finish reason, usage it counted, [DONE]
    assert ended[0] == 200 and events(ended[1])[-1] == b"[DONE]"
    usage = orjson.loads(events(ended[1])[-2])["usage"]
    assert streamed_text(ended[1]) == ("Hello w1 w2", 3) and usage["completion_tokens"] >= 3
    await assert_settled_once(faulty.env["CREDITGATE_DATABASE_URL"], member.org_id, {
        call.rid("500"): None, call.rid("503"): None, call.rid("502-stream"): None, call.rid("died"): None,
        call.rid("dropped"): estimate(*dropped_seen), call.rid("failed"): estimate(*failed_seen),
        call.rid("ended"): ("provider", usage["prompt_tokens"], usage["completion_tokens"])})


async def test_litellm_sigkilled_mid_stream(
    faulty: Gateway, pg: services.Service, redis_server: services.Service, fake_provider: services.Service,
    tmp_path: Path,
) -> None:
    """A LiteLLM of its own (the session's stays up), killed while a stream and a non-stream request run
    (the gateway's default upstream timeout: the non-stream answer takes 10 s)."""
    config = services.render_litellm_config(fake_provider.url, tmp_path / "litellm_config.yaml")
    doomed = services.start_litellm(config)
    database = faulty.env["CREDITGATE_DATABASE_URL"]
    gateway = start_gateway(pg, redis_server, doomed, fake_provider, name="e2e_faults", database_url=database,
                            env=_env(database, redis_server, doomed, fake_provider, tmp_path, timeout=600))
    try:
        member = make_member(gateway)
        call = Caller(gateway, member)
        try:
            waiting = asyncio.ensure_future(call.answer("waiting", fake_chunks=200, fake_delay_ms=50))
            await in_flight_at_provider(fake_provider.url, {call.rid("waiting")})
            body = {"model": "fake-medium", "messages": MESSAGES, "stream": True, "fake_tag": call.rid("cut"),
                    "fake_chunks": 400, "fake_delay_ms": 50}
            raw = b""
            async with call.client.stream("POST", "/v1/chat/completions", json=body,
                                          headers={"x-request-id": call.rid("cut")}) as resp:
                assert resp.status_code == 200
                async for chunk in resp.aiter_raw():
                    raw += chunk
                    if doomed.alive() and raw.count(b'"content"') >= 5:
                        doomed.kill()  # SIGKILL, mid-stream and mid-answer
            answered = await waiting
            after = await call.answer("after", fake_chunks=2)
            ready = await call.client.get("/readyz")
        finally:
            await call.close()
        text, chunks = broken_stream(raw, "upstream_failed")
        assert chunks >= 5
        assert (answered.status_code, answered.json()) == error(502, "upstream_failed")
        assert (after.status_code, after.json()) == error(502, "upstream_unreachable")
        assert (ready.status_code, ready.json()["checks"]["litellm"]) == (503, "failed")
        await assert_settled_once(database, member.org_id, {
            call.rid("cut"): estimate(text, chunks), call.rid("waiting"): None, call.rid("after"): None})
    finally:
        gateway.stop()
        doomed.stop()
