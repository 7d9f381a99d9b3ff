"""A rolling restart through the real stack: `creditgate serve` gets SIGTERM during 20 open streams and 20
non-stream requests while a second replica on the same PostgreSQL, Redis and LiteLLM keeps serving.

Half of each kind ends within the drain's deadline and is settled from LiteLLM's usage; the other half is
still running at the deadline: those streams end with the final error event and are settled `estimate` (the
counted prompt plus exactly what was streamed), those non-stream requests get 503 `shutting_down` and their
holds are voided. The replica is not ready from the signal on, serves a request sent within the grace,
refuses one sent after it, and exits 0; nothing is pending afterwards and `creditgate verify` is clean.
With CREDITGATE_WORKERS=2 the signal goes to uvicorn's parent only, as Kubernetes sends it."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
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
from tests.e2e.conftest import Gateway, make_member, start_gateway
from tests.e2e.test_billing import expected_charge
from tests.waiting import until

GRACE, DEADLINE = 2.0, 8.0
MESSAGES = [{"role": "user", "content": "tell me a story about a gateway that restarts"}]
FINISHES = {"fake_chunks": 40, "fake_delay_ms": 100}  # 4 s: open when the signal lands, done by the deadline
OUTLIVES = {"fake_chunks": 400, "fake_delay_ms": 100}  # 40 s: cut at the deadline
REFUSED = {"error": {"message": "This gateway replica is shutting down; retry the request.",
                     "type": "service_unavailable", "param": None, "code": "shutting_down"}}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(pg: services.Service, redis_server: services.Service, litellm: services.Service,
            fake_provider: services.Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Replica B (kept for the module) on its own database; each test starts the replica it stops beside it."""
    database = services.create_database(pg.url, "e2e_sigterm")
    migrate(database)
    config = services.render_litellm_config(fake_provider.url, tmp_path_factory.mktemp("sigterm") / "litellm.yaml")
    env = gateway_env(database, redis_server.url, litellm.url, litellm_config=config, extra={
        "CREDITGATE_UNREADY_GRACE_SECONDS": str(GRACE), "CREDITGATE_DRAIN_SECONDS": str(DEADLINE),
        "CREDITGATE_SPOOL_DIR": str(config.parent / "spool-b")})
    replica_b = start_gateway(pg, redis_server, litellm, fake_provider, name="e2e_sigterm", database_url=database,
                              env=env)
    yield replica_b
    replica_b.stop()


async def ledger_of(dsn: str, org_id: str) -> tuple[dict[str, str], dict[str, list[dict[str, Any]]]]:
    """(hold state by request id, usage records by request id) of one org, read from the ledger's tables."""
    conn = await asyncpg.connect(dsn)
    try:
        holds = await conn.fetch("SELECT request_id, state::text FROM creditgate.holds WHERE org_id = $1", org_id)
        usage = await conn.fetch("SELECT request_id, usage_source, prompt_tokens, completion_tokens, charged "
                                 "FROM creditgate.usage_records WHERE org_id = $1", org_id)
    finally:
        await conn.close()
    records: dict[str, list[dict[str, Any]]] = {}
    for row in usage:
        records.setdefault(row["request_id"], []).append(dict(row))
    return {row["request_id"]: row["state"] for row in holds}, records


async def pending_holds(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM creditgate.holds WHERE state = 'pending'"))
    finally:
        await conn.close()


def verify(dsn: str) -> subprocess.CompletedProcess[str]:
    """`creditgate verify` as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "proxy.cli", "verify"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "CREDITGATE_DATABASE_URL": dsn, "PYTHONPATH": str(ROOT)}, timeout=60)


def events(raw: bytes) -> list[bytes]:
    return [e[len(b"data: "):] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]


def streamed_text(raw: bytes) -> tuple[str, int]:
    """The content a client received, and in how many content chunks."""
    pieces = []
    for event in events(raw):
        if event != b"[DONE]":
            for choice in orjson.loads(event).get("choices") or ():
                if choice.get("delta", {}).get("content"):
                    pieces.append(choice["delta"]["content"])
    return "".join(pieces), len(pieces)


async def stream(client: httpx.AsyncClient, rid: str, controls: dict[str, Any]) -> tuple[int, bytes]:
    body = {"model": "fake-medium", "messages": MESSAGES, "stream": True, "fake_tag": rid, **controls}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers={"x-request-id": rid}) as resp:
        return resp.status_code, b"".join([chunk async for chunk in resp.aiter_raw()])


async def answer(client: httpx.AsyncClient, rid: str, controls: dict[str, Any]) -> httpx.Response:
    body = {"model": "fake-medium", "messages": MESSAGES, "fake_tag": rid, **controls}
    return await client.post("/v1/chat/completions", json=body, headers={"x-request-id": rid})


async def in_flight_at_provider(provider: str, tags: set[str], timeout: float = 30.0) -> None:
    """Until the fake provider has received every tagged request (so each is open at the gateway)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            seen = {r["body"].get("fake_tag") for r in (await http.get(f"{provider}/_requests")).json()}
            if tags <= seen:
                return
            assert time.monotonic() < deadline, f"never reached the provider: {sorted(tags - seen)}"
            await asyncio.sleep(0.1)


class Traffic:
    """Requests to replica B every 50 ms, until stopped: each status is recorded."""

    def __init__(self, gateway: Gateway, key: str) -> None:
        self.gateway, self.key = gateway, key
        self.statuses: list[int] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        headers = {"authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.gateway.url, headers=headers, timeout=30) as client:
            while not self._stop.is_set():
                resp = await client.post("/v1/chat/completions", json={
                    "model": "fake-small", "messages": [{"role": "user", "content": "still there?"}],
                    "fake_chunks": 2})
                self.statuses.append(resp.status_code)
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()


def drain_lines(log: Path) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("msg") == "drained: stopping the server"]


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_drains_settles_everything_and_exits_0_while_a_second_replica_serves(
    workers: int, cluster: Gateway, pg: services.Service, redis_server: services.Service,
    litellm: services.Service, fake_provider: services.Service, tmp_path: Path,
) -> None:
    replica_a = start_gateway(pg, redis_server, litellm, fake_provider, name="e2e_sigterm", workers=workers,
                              database_url=cluster.env["CREDITGATE_DATABASE_URL"],
                              env={**cluster.env, "CREDITGATE_SPOOL_DIR": str(tmp_path / "spool-a")})
    dsn = cluster.env["CREDITGATE_DATABASE_URL"]
    try:
        member = make_member(cluster, tier="starter")
        bystander = make_member(cluster, tier="starter")
        run = secrets.token_hex(3)
        ids = {kind: [f"{run}-{kind}-{i}" for i in range(10)] for kind in ("s-fin", "s-cut", "n-fin", "n-cut")}
        headers = {"authorization": f"Bearer {member.key}"}
        async with httpx.AsyncClient(base_url=replica_a.url, headers=headers, timeout=60) as client:
            ready = (await client.get("/readyz")).json()
            assert ready["checks"]["draining"] == "ok"
            streaming = [asyncio.ensure_future(stream(client, rid, FINISHES)) for rid in ids["s-fin"]]
            streaming += [asyncio.ensure_future(stream(client, rid, OUTLIVES)) for rid in ids["s-cut"]]
            waiting = [asyncio.ensure_future(answer(client, rid, FINISHES)) for rid in ids["n-fin"]]
            waiting += [asyncio.ensure_future(answer(client, rid, OUTLIVES)) for rid in ids["n-cut"]]
            await in_flight_at_provider(fake_provider.url, {rid for group in ids.values() for rid in group})
            traffic = Traffic(cluster, bystander.key)
            elsewhere = asyncio.ensure_future(traffic.run())
            await asyncio.sleep(0.3)
            assert not any(task.done() for task in [*streaming, *waiting])  # all 40 open when the signal lands

            signalled = time.monotonic()
            os.kill(replica_a.svc.proc.pid, signal.SIGTERM)  # the main process only, as Kubernetes does
            async def unready_now() -> bool:
                return (await client.get("/readyz")).status_code == 503

            # uvicorn's parent (two workers) forwards signals every 0.5 s: unready within a second, in grace still
            await until(unready_now, GRACE - 0.5, "unready after SIGTERM", every=0.05)
            unready = await client.get("/readyz")
            assert unready.status_code == 503
            assert (unready.json()["status"], unready.json()["checks"]["draining"]) == ("unavailable", "failed")
            in_grace = await answer(client, f"{run}-grace", {"fake_chunks": 2})
            assert in_grace.status_code == 200 and in_grace.headers["connection"] == "close"
            await asyncio.sleep(signalled + GRACE + 1.0 - time.monotonic())
            refused = await answer(client, f"{run}-refused", {"fake_chunks": 2})
            assert (refused.status_code, refused.json()) == (503, REFUSED)
            assert refused.headers["retry-after"] == "1" and refused.headers["x-request-id"] == f"{run}-refused"
            streams, answers = await asyncio.gather(*streaming), await asyncio.gather(*waiting)

        while replica_a.svc.proc.poll() is None and time.monotonic() - signalled < DEADLINE + 20:
            await asyncio.sleep(0.05)
        exited = time.monotonic() - signalled
        traffic.stop()
        await elsewhere
        assert replica_a.svc.proc.returncode == 0, replica_a.svc.tail()
        assert DEADLINE <= exited < DEADLINE + 8
        assert len(traffic.statuses) >= 10 and set(traffic.statuses) == {200}  # replica B served throughout

        finished, cut = streams[:10], streams[10:]
        assert all(status == 200 and events(raw)[-1] == b"[DONE]" for status, raw in finished)
        for status, raw in cut:  # the final error event, no [DONE]
            assert status == 200 and b"[DONE]" not in raw
            assert orjson.loads(events(raw)[-1]) == REFUSED
        assert [r.status_code for r in answers[:10]] == [200] * 10
        assert [(r.status_code, r.json()) for r in answers[10:]] == [(503, REFUSED)] * 10

        holds, usage = await ledger_of(dsn, member.org_id)
        settled = [*ids["s-fin"], *ids["s-cut"], *ids["n-fin"], f"{run}-grace"]
        assert holds == {**dict.fromkeys(settled, "posted"), **dict.fromkeys(ids["n-cut"], "voided")}
        assert sorted(usage) == sorted(settled) and all(len(rows) == 1 for rows in usage.values())
        for rid in [*ids["s-fin"], *ids["n-fin"], f"{run}-grace"]:
            assert usage[rid][0]["usage_source"] == "provider"
        assert {usage[rid][0]["completion_tokens"] for rid in [*ids["s-fin"], *ids["n-fin"]]} == {40}
        counter = TokenCounter()
        prompt = counter.prompt_tokens("chat/completions", {"messages": MESSAGES})
        for rid, (_, raw) in zip(ids["s-cut"], cut, strict=True):
            text, chunks = streamed_text(raw)
            completion = max(counter.count(text), chunks)
            assert 10 <= chunks < 400
            row = usage[rid][0]
            assert (row["usage_source"], row["prompt_tokens"], row["completion_tokens"]) == (
                "estimate", prompt, completion)
            assert row["charged"] == expected_charge("fake-medium", "starter", Decimal("0.25"), prompt, completion)
        assert await pending_holds(dsn) == 0
        audit = verify(dsn)
        assert (audit.returncode, audit.stdout.strip()) == (0, "verify: all ledger invariants hold")

        lines = drain_lines(replica_a.svc.log)
        assert len(lines) == workers
        totals = {k: sum(line[k] for line in lines) for k in ("finished", "cut", "refused", "unsettled")}
        assert totals == {"finished": 41, "cut": 20, "refused": 1, "unsettled": 0}
        print(f"\ndrain with {workers} worker(s): exit {exited:.2f} s after SIGTERM; drain "
              f"{max(line['seconds'] for line in lines):.2f} s; {totals}; replica B answered "
              f"{len(traffic.statuses)} requests, all 200")
    finally:
        replica_a.stop()
