"""PostgreSQL stopped and started again under the real stack (issue 10): the test runs its own PostgreSQL
so it can stop it.

- Ten seconds without PostgreSQL during mixed traffic (streams and non-streams, four members in two
  orgs): every 2xx answer ends with exactly one usage record carrying the provider's real usage, none is
  settled twice, every refusal is a prompt 503 `ledger_unavailable` (every billed route, the caller's and
  the admin routes too), the spool drains once PostgreSQL is back and `verify` is clean.
- PostgreSQL frozen (every process SIGSTOPped: a failover that drops packets rather than refusing them):
  every route still answers 503 `ledger_unavailable` within the connect and statement timeouts.
- The gateway SIGKILLed while settlements wait in its spool: a new process on the same spool directory
  adopts the file and posts them.

The figures (spooled, replayed, refused, time to drain) are printed: run with `-s` to see them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from devstack import services
from proxy.app import BILLED_ROUTES
from proxy.ledger.spool_entry import parse_lines
from proxy.ledger.verify import audit
from tests.e2e.conftest import Gateway, Member, make_member, start_gateway
from tests.waiting import until, until_sync

OUTAGE_SECONDS = 10.0
REFUSAL_DEADLINE = 5.0  # a refusal must come back this fast: a bounded connect, never a hang
# PostgreSQL silent: each answer waits out a 3 s connect or statement timeout (two when the call is retried,
# more when all 16 pooled connections are waiting): bounded, never a hang
FROZEN_DEADLINE = 20.0
PROMPT = "please count slowly for the outage test"
PROMPT_TOKENS = len(PROMPT.split()) + 1  # the fake provider: words plus one per message
# (stream, chunks, ms between chunks): long ones are in flight when PostgreSQL goes away
KINDS = ((True, 30, 100), (False, 20, 100), (True, 8, 20), (False, 6, 0))


class Postgres:
    """A PostgreSQL of this module's own, stopped (fast shutdown) and started again on the same port and data."""

    def __init__(self) -> None:
        # in the system's temporary directory, which the postgres user can reach (as start_postgres's own
        # throwaway clusters are); removed by close()
        self.workdir = Path(tempfile.mkdtemp(prefix="creditgate-pg-outage-"))
        self.svc = services.start_postgres(workdir=self.workdir)

    def stop(self) -> None:
        os.killpg(self.svc.proc.pid, signal.SIGINT)  # fast shutdown: every client connection is cut
        self.svc.proc.wait(30)

    def start(self) -> None:
        self.svc = services.start_postgres(port=self.svc.port, workdir=self.workdir)

    def signal_all(self, sig: int) -> None:
        """`sig` to the postmaster and every backend: PostgreSQL's children leave its process group
        (setsid), so a group signal would reach the postmaster alone."""
        root = self.svc.proc.pid
        os.kill(root, sig)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                if parent == root:
                    os.kill(int(stat.parent.name), sig)
            except (OSError, ValueError):
                continue

    def close(self) -> None:
        self.svc.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def ensure_up(self) -> None:
        """After a test that failed while it was stopped, for the next one."""
        if not self.svc.alive():
            self.start()


@pytest.fixture(scope="module")
def own_pg() -> Iterator[Postgres]:
    pg = Postgres()
    yield pg
    pg.close()


@pytest.fixture(scope="module")
def outage_gw(own_pg: Postgres, redis_server: services.Service, litellm: services.Service,
              fake_provider: services.Service) -> Iterator[Gateway]:
    gw = start_gateway(own_pg.svc, redis_server, litellm, fake_provider, name="outage")
    yield gw
    gw.svc.stop()


@dataclass
class Call:
    rid: str
    member: Member
    stream: bool
    chunks: int
    started: float
    ended: float = 0.0
    status: int = 0
    code: str | None = None
    usage: tuple[int, int] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    done: bool = False  # a stream that ended with [DONE]


async def call(client: httpx.AsyncClient, member: Member, rid: str, stream: bool, chunks: int, delay: int) -> Call:
    body: dict[str, Any] = {"model": "fake-small", "messages": [{"role": "user", "content": PROMPT}],
                            "max_tokens": 100, "fake_chunks": chunks, "fake_delay_ms": delay, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    c = Call(rid, member, stream, chunks, time.monotonic())
    headers = {"authorization": f"Bearer {member.key}", "x-request-id": rid}
    async with client.stream("POST", f"{member.gateway.url}/v1/chat/completions", json=body, headers=headers) as r:
        c.status, c.headers = r.status_code, dict(r.headers)
        raw = await r.aread()
    c.ended = time.monotonic()
    if c.status != 200:
        c.code = orjson.loads(raw)["error"]["code"]
    elif not stream:
        u = orjson.loads(raw)["usage"]
        c.usage = (u["prompt_tokens"], u["completion_tokens"])
    else:
        for line in raw.decode().splitlines():
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                c.done = True
            elif line.startswith("data: ") and (event := orjson.loads(data)).get("usage"):
                c.usage = (event["usage"]["prompt_tokens"], event["usage"]["completion_tokens"])
    return c


async def traffic(members: list[Member], stop: asyncio.Event, calls: list[Call], *, workers: int = 12) -> None:
    """`workers` callers in a loop over KINDS until `stop`; a refused caller waits 0.25 s before its next try."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:

        async def worker(w: int) -> None:
            n = 0
            while not stop.is_set():
                stream, chunks, delay = KINDS[(w + n) % len(KINDS)]
                c = await call(client, members[w % len(members)], f"po-{w}-{n}", stream, chunks, delay)
                calls.append(c)
                n += 1
                if c.status != 200:
                    await asyncio.sleep(0.25)

        await asyncio.gather(*(worker(w) for w in range(workers)))


async def probe_everything(gw: Gateway, member: Member, rid: str) -> dict[str, tuple[int, str | None, float]]:
    """Every billed route (both prefixes), the caller's routes and the admin routes at once: status, code,
    seconds."""
    bodies = {
        "chat/completions": {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}]},
        "completions": {"model": "fake-small", "prompt": "hi"},
        "embeddings": {"model": "fake-embed", "input": "hi"},
        "images/generations": {"model": "fake-image", "prompt": "a cat"},
        "responses": {"model": "fake-small", "input": "hi"},
    }
    caller = {"authorization": f"Bearer {member.key}"}
    admin = {"authorization": f"Bearer {gw.env['CREDITGATE_ADMIN_TOKEN']}"}
    asks: list[tuple[str, str, dict[str, str], Any]] = [
        ("POST", f"{prefix}/{route}", caller, bodies.get(route, {"model": "fake-small"}))
        for route in BILLED_ROUTES for prefix in ("/v1", "/api/v1/llm")]
    asks += [("GET", path, caller, None) for path in (
        "/v1/credits", "/v1/credits/history", "/v1/usage", f"/v1/requests/{rid}", "/v1/byok/keys",
        "/v1/responses/resp_x")]
    asks += [("GET", "/admin/orgs", admin, None), ("GET", f"/admin/orgs/{member.org_id}", admin, None),
             ("GET", "/admin/users", admin, None), ("POST", "/admin/orgs", admin, {"name": "x", "tier": "starter"})]
    async with httpx.AsyncClient(base_url=gw.url, timeout=60) as http:

        async def ask(method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, str | None, float]:
            started = time.monotonic()
            r = await http.request(method, path, headers=headers, json=body)
            code = r.json()["error"]["code"] if r.status_code >= 400 else None
            return r.status_code, code, time.monotonic() - started

        answers = await asyncio.gather(*(ask(*a) for a in asks))
    return {f"{method} {path}": answer for (method, path, _, _), answer in zip(asks, answers, strict=True)}


def all_refused(probes: dict[str, tuple[int, str | None, float]]) -> bool:
    return {k: (s, code) for k, (s, code, _) in probes.items()} == {k: (503, "ledger_unavailable") for k in probes}


def metric(gw: Gateway, name: str, labels: str = "") -> float:
    text = httpx.get(f"{gw.url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def ledger_rows(dsn: str, rids: list[str]) -> tuple[dict[str, Any], dict[str, list[str]], dict[str, str]]:
    """(usage record by request id, journal kinds by request id, hold state by request id)."""
    conn = await asyncpg.connect(dsn)
    try:
        usage = {r["request_id"]: dict(r) for r in await conn.fetch(
            "SELECT * FROM creditgate.usage_records WHERE request_id = ANY($1)", rids)}
        kinds: dict[str, list[str]] = {}
        for r in await conn.fetch("SELECT request_id, kind FROM creditgate.journal WHERE request_id = ANY($1) "
                                  "ORDER BY org_id, version", rids):
            kinds.setdefault(r["request_id"], []).append(r["kind"])
        holds = {r["request_id"]: r["state"] for r in await conn.fetch(
            "SELECT request_id, state::text AS state FROM creditgate.holds WHERE request_id = ANY($1)", rids)}
    finally:
        await conn.close()
    return usage, kinds, holds


def assert_settled_once_with_real_usage(dsn: str, ok: list[Call]) -> None:
    """Every 2xx answer: one usage record with the provider's usage as the client saw it, posted once."""
    usage, kinds, holds = asyncio.run(ledger_rows(dsn, [c.rid for c in ok]))
    for c in ok:
        assert c.usage == (PROMPT_TOKENS, c.chunks), c
        assert not c.stream or c.done, c
        record = usage.get(c.rid)
        assert record is not None, f"no usage record for the answered request {c.rid}"
        assert (record["usage_source"], record["prompt_tokens"], record["completion_tokens"]) == (
            "provider", *c.usage), c.rid
        assert (kinds[c.rid], holds[c.rid]) == (["hold", "post"], "posted"), c.rid
        if not c.stream:  # the charge header is the charge posted, spooled or not
            assert int(c.headers["x-credits-charged"]) == record["charged"], c.rid


def test_ten_seconds_without_postgresql_lose_no_usage_and_settle_nothing_twice(
    own_pg: Postgres, outage_gw: Gateway
) -> None:
    gw = outage_gw
    try:
        orgs = [make_member(gw), make_member(gw)]
        members = [*orgs, *(make_member(gw, org_id=m.org_id) for m in orgs)]
        calls: list[Call] = []
        marks: dict[str, float] = {}
        probes: dict[str, tuple[int, str | None, float]] = {}

        async def drained() -> None:
            """When the spool is empty again after PostgreSQL came back."""
            while await asyncio.to_thread(metric, gw, "creditgate_spool_depth") > 0:
                await asyncio.sleep(0.05)
            marks["drained"] = time.monotonic()

        async def scenario() -> None:
            stop = asyncio.Event()
            running = asyncio.create_task(traffic(members, stop, calls))
            await asyncio.sleep(4)
            await asyncio.to_thread(own_pg.stop)
            marks["down"] = time.monotonic()
            await asyncio.sleep(3)  # the membership cache (1 s) has expired: every new request needs PostgreSQL
            probes.update(await probe_everything(gw, members[0], "po-0-0"))
            await asyncio.sleep(marks["down"] + OUTAGE_SECONDS - time.monotonic())
            marks["restart"] = time.monotonic()
            await asyncio.to_thread(own_pg.start)
            marks["up"] = time.monotonic()
            watch = asyncio.create_task(drained())
            await asyncio.sleep(3)
            stop.set()
            await running
            await asyncio.wait_for(watch, 30)

        asyncio.run(scenario())
        spooled = metric(gw, "creditgate_settlements_total", '{outcome="spooled"}')
        replayed = metric(gw, "creditgate_spool_replayed_total", '{outcome="posted"}')

        ok = [c for c in calls if c.status == 200]
        refused = [c for c in calls if c.status != 200]
        during = [c for c in calls if marks["down"] + 0.5 < c.started < marks["restart"]]
        assert {(c.status, c.code) for c in refused} == {(503, "ledger_unavailable")}
        assert during and all(c.status == 503 for c in during)  # nothing is admitted without the ledger
        assert max(c.ended - c.started for c in refused) < REFUSAL_DEADLINE
        assert all_refused(probes), probes
        assert max(t for _, _, t in probes.values()) < REFUSAL_DEADLINE
        assert_settled_once_with_real_usage(gw.env["CREDITGATE_DATABASE_URL"], ok)
        # settled while PostgreSQL was away: spooled (a non-stream answer then has no X-Credits-Remaining; which
        # requests are in flight when it stops is timing: the next test spools non-stream answers for sure)
        spooled_answers = [c for c in ok if not c.stream and "x-credits-remaining" not in c.headers]
        assert spooled > 0 and len(spooled_answers) <= spooled
        assert replayed == spooled
        assert metric(gw, "creditgate_spool_replayed_total", '{outcome="already_settled"}') == 0
        report = asyncio.run(audit(gw.env["CREDITGATE_DATABASE_URL"]))
        assert (report.violations, report.overage) == ([], [])
        print(f"\npg outage {OUTAGE_SECONDS:.0f} s: {len(calls)} requests, {len(ok)} answered (2xx), "
              f"{len(refused)} refused with 503 ({len(during)} started during the outage, slowest "
              f"{max(c.ended - c.started for c in refused):.2f} s); {spooled:.0f} settlements spooled, "
              f"{replayed:.0f} replayed; spool drained {marks['drained'] - marks['up']:.2f} s after PostgreSQL "
              f"answered again")
    finally:
        own_pg.ensure_up()


def test_a_frozen_postgresql_is_refused_within_the_timeouts_never_a_hang(own_pg: Postgres, outage_gw: Gateway
                                                                         ) -> None:
    """A failover that silently drops packets rather than refusing them (here: PostgreSQL SIGSTOPped): the
    connect and statement timeouts (3 s) bound every answer."""
    gw = outage_gw
    member = make_member(gw)
    assert member.get("/v1/credits").status_code == 200  # the key is cached: the refusals are the ledger's
    own_pg.signal_all(signal.SIGSTOP)
    try:
        time.sleep(1.1)  # past the membership cache
        probes = asyncio.run(probe_everything(gw, member, "nothing"))
    finally:
        own_pg.signal_all(signal.SIGCONT)
    assert all_refused(probes), probes
    route = max(probes, key=lambda k: probes[k][2])
    slowest = probes[route][2]
    assert slowest < FROZEN_DEADLINE, probes
    print(f"\nPostgreSQL frozen: {len(probes)} routes refused with 503, slowest {route} after {slowest:.2f} s")


async def held(dsn: str, rids: list[str]) -> None:
    """Until every one of `rids` holds credit (admitted, not yet settled)."""
    conn = await asyncpg.connect(dsn)

    async def all_pending() -> bool:
        return bool(await conn.fetchval("SELECT count(*) FROM creditgate.holds WHERE request_id = ANY($1) "
                                        "AND state = 'pending'", rids) == len(rids))
    try:
        await until(all_pending, 10, "every request admitted", every=0.05)
    finally:
        await conn.close()


def test_a_killed_gateway_spool_is_replayed_by_the_next_process(
    own_pg: Postgres, redis_server: services.Service, litellm: services.Service, fake_provider: services.Service,
) -> None:
    gw = start_gateway(own_pg.svc, redis_server, litellm, fake_provider, name="outage_kill")
    spool_dir = Path(gw.env["CREDITGATE_SPOOL_DIR"])
    successor = None
    try:
        member = make_member(gw)
        calls: list[Call] = []

        async def answered_while_down() -> None:
            async with httpx.AsyncClient(timeout=60) as client:
                await call(client, member, "warm", False, 1, 0)  # the key and the membership are cached now
                started = [asyncio.create_task(call(client, member, f"kill-{i}", i % 2 == 0, 10, 200))
                           for i in range(6)]
                await held(gw.env["CREDITGATE_DATABASE_URL"], [f"kill-{i}" for i in range(6)])  # none answered yet
                await asyncio.to_thread(own_pg.stop)
                calls.extend(await asyncio.gather(*started))

        asyncio.run(answered_while_down())
        assert [(c.status, c.usage) for c in calls] == [(200, (PROMPT_TOKENS, 10))] * 6
        assert all("x-credits-remaining" not in c.headers for c in calls if not c.stream)
        until_sync(lambda: metric(gw, "creditgate_spool_depth") == 6, 10, "six settlements spooled")
        os.killpg(gw.svc.proc.pid, signal.SIGKILL)
        gw.svc.proc.wait(10)
        (left,) = spool_dir.glob("spool-*.jsonl")
        entries, bad = parse_lines(left.read_bytes())
        assert (sorted(e.request_id for e in entries), bad) == ([f"kill-{i}" for i in range(6)], 0)

        own_pg.start()
        started = time.monotonic()
        successor = start_gateway(own_pg.svc, redis_server, litellm, fake_provider, name="outage_kill",
                                  database_url=gw.env["CREDITGATE_DATABASE_URL"], env=gw.env)
        until_sync(lambda: metric(successor, "creditgate_spool_replayed_total", '{outcome="posted"}') == 6, 15,
                 "the dead process's spool replayed")
        print(f"\nkilled with 6 settlements spooled: the next process replayed them "
              f"{time.monotonic() - started:.2f} s after it was started")
        # the replay is counted as each posts; the spool file goes, and the depth with it, once all are
        until_sync(lambda: not left.exists() and metric(successor, "creditgate_spool_depth") == 0, 10,
                 "the replayed spool removed")
        assert_settled_once_with_real_usage(gw.env["CREDITGATE_DATABASE_URL"], calls)
        report = asyncio.run(audit(gw.env["CREDITGATE_DATABASE_URL"]))
        assert (report.violations, report.overage) == ([], [])
    finally:
        gw.svc.stop()
        if successor is not None:
            successor.svc.stop()
        own_pg.ensure_up()
