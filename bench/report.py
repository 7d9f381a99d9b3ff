"""The one benchmark behind `make bench`: `python -m bench.report [--seconds S] [--out BENCHMARKS.md]`.

Everything side by side in one process tree, so every figure is a ratio to a baseline measured in the
same run on the same (shared, noisy) machine:

1. the gateway targets of bench.gateway_full (the provider directly, the bare passthrough, creditgate
   with the empty chain, creditgate as `creditgate serve` builds it, LiteLLM itself) against one
   PostgreSQL (fsync and synchronous_commit on) and Redis: CPU per request, added latency at c=1,
   64 slow streams;
2. the two-commit floor: two synchronous commits back to back on that same PostgreSQL, the least a
   non-stream request that reserves and then settles before answering can add;
3. open streams: 2,000 streams held open at once through the full gateway (one worker), its RSS
   before and while they are open; then the clients leave and every stream is settled `estimate`;
4. one hot pool: reserve+settle pairs per second at c=128 with fsync on, group commit
   (`PgLedger` as shipped) against the naive design (`PgLedger(batching=False)`), in a second
   database of the same PostgreSQL (bench.ledger's cell), unpinned as `make bench-ledger` runs.

For the 64 slow streams it also prints where the CPU of each stream goes (the load client and the provider,
the target, PostgreSQL and Redis) against the pinned CPUs: a rate capped by CPU, not by waiting.

Each of issue 13's aims is printed next to its measurement with met / not met, and the whole result is
written to BENCHMARKS.md (the command, the machine, the date, the tables). Afterwards the ledger must
be clean: every answered request settled exactly once and `creditgate verify` empty (exit 1
otherwise). Processes are pinned as in bench.gateway_full (`--cpus 0`: everything on one core, so CPU
per request is what a core buys). 127.0.0.1 only; about 3 minutes with the default 3 s phases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import orjson

from bench.gateway import STREAM, Target, main_async, tree_cpu_seconds
from bench.gateway_full import Product, gateway_specs, ledger_counts, product, settlement_report
from bench.gateway_load import Phase
from bench.ledger import design_cell, prepare, sweep
from devstack import services

ROOT = Path(__file__).resolve().parent.parent
OPEN_STREAMS = 2000
# a stream whose first chunk arrives at once and whose second would come a minute later: it stays open
# until the client leaves
HELD_STREAM = {**STREAM, "fake_chunks": 3, "fake_delay_ms": 60_000}
MIB = 1024 * 1024
OPENING = 128  # streams being opened at once (reserve in flight); the others wait their turn, as arrivals would


@dataclass
class OpenStreams:
    wanted: int
    opened: int = 0
    failed: int = 0
    open_seconds: float = 0.0
    rss_before: int = 0  # bytes, the worker's VmRSS before the first stream opened
    rss_open: int = 0  # bytes, with every stream open
    settled_seconds: float | None = None  # from the clients leaving to no hold pending

    def per_stream_kib(self) -> float:
        return (self.rss_open - self.rss_before) / max(self.opened, 1) / 1024


@dataclass
class Results:
    targets: list[Target] = field(default_factory=list)
    floor: Phase | None = None
    streams: OpenStreams | None = None
    hot_pool: dict[str, tuple[float, int]] = field(default_factory=dict)  # design -> (pairs/s, timeouts)
    settled_ok: bool = False
    cpus: int = 1  # CPUs the gateways, servers and load were pinned to
    db_apart: bool = False  # PostgreSQL and Redis pinned elsewhere (--db-cpus): their CPU is not on those CPUs
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and at the end

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (VmRSS), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def two_commit_floor(dsn: str, seconds: float) -> Phase:
    """Two synchronous commits in a row (one-row UPDATEs, autocommit) from asyncpg at c=1, in the empty
    database `dsn`."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE floor (id int PRIMARY KEY, n bigint NOT NULL); "
                           "INSERT INTO floor VALUES (1, 0)")
        phase = Phase(seconds)
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            started = time.monotonic()
            await conn.execute("UPDATE floor SET n = n + 1 WHERE id = 1")
            await conn.execute("UPDATE floor SET n = n + 1 WHERE id = 1")
            phase.latencies.append(time.monotonic() - started)
    finally:
        await conn.close()
    print(f"  two-commit floor: p50 {phase.quantile('50') * 1000:.2f} ms, p99 {phase.quantile('99') * 1000:.2f} ms "
          f"({len(phase.latencies)} pairs)", flush=True)
    return phase


async def hold_streams_open(target: Target, dsn: str, org_id: str, wanted: int) -> OpenStreams:
    """Opens `wanted` streams through `target` (each waits for its first chunk), reads the worker's RSS
    with all of them open, then lets every client leave and waits until no hold of the org is pending."""
    assert target.pid is not None
    result = OpenStreams(wanted, rss_before=rss_bytes(target.pid))
    release = asyncio.Event()
    headers = {"authorization": f"Bearer {target.key}", "content-type": "application/json"}
    payload = orjson.dumps(HELD_STREAM)

    opening = asyncio.Semaphore(OPENING)

    async def one(session: aiohttp.ClientSession) -> None:
        try:
            async with opening:
                resp = await session.post(f"{target.url}/v1/chat/completions", data=payload, headers=headers)
                first = await resp.content.readuntil(b"\n\n")
            async with resp:
                if resp.status != 200 or not first.startswith(b"data: "):
                    result.failed += 1
                    return
                result.opened += 1
                await release.wait()
        except aiohttp.ClientError:
            result.failed += 1

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(wanted)]
        deadline = started + 90
        while result.opened + result.failed < wanted and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        result.open_seconds = time.monotonic() - started
        await asyncio.sleep(0.5)  # let the worker finish what opening them started (checkpoints, logs)
        result.rss_open = rss_bytes(target.pid)
        release.set()
        await asyncio.gather(*tasks)
    left = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        while time.monotonic() < left + 60:
            pending = await conn.fetchval("SELECT count(*) FROM creditgate.holds WHERE org_id = $1 "
                                          "AND state = 'pending'", org_id)
            if pending == 0:
                result.settled_seconds = time.monotonic() - left
                break
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    print(f"  open streams: {result.opened} of {wanted} open in {result.open_seconds:.1f} s ({result.failed} failed); "
          f"worker RSS {result.rss_before / MIB:.1f} -> {result.rss_open / MIB:.1f} MiB "
          f"({result.per_stream_kib():.1f} KiB per stream); all settled "
          + (f"{result.settled_seconds:.1f} s after the clients left" if result.settled_seconds is not None
             else "NOT within 60 s"), flush=True)
    return result


async def hot_pool(dsn: str, seconds: float, concurrency: int) -> dict[str, tuple[float, int]]:
    """bench.ledger's cell on one pool at `concurrency`, in the empty database `dsn`: group commit, then the
    naive design."""
    await prepare(dsn, 1)
    await design_cell(dsn, batching=True, pools=1, concurrency=32, seconds=1, tag="hot-warm-up")  # caches, plans
    found = {}
    for design, batching in (("group commit", True), ("naive", False)):
        found[design] = await design_cell(dsn, batching=batching, pools=1, concurrency=concurrency, seconds=seconds,
                                          tag=f"hot-{design[0]}")
        print(f"  hot pool c={concurrency} {design:<13} {found[design][0]:8.0f} pairs/s "
              f"({found[design][1]} timed out)", flush=True)
    await sweep(dsn)
    return found


def unpin(pg: services.Service) -> None:
    """Gives this process and PostgreSQL (the postmaster, so new backends too) every CPU again: the hot-pool
    phase runs unpinned, as `make bench-ledger` does (one client, one PostgreSQL, the whole box)."""
    every = set(range(os.cpu_count() or 1))
    os.sched_setaffinity(0, every)
    for pid in services.process_tree(pg.proc.pid):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, every)


# ---------------------------------------------------------------------------------------------- aims

@dataclass(frozen=True, slots=True)
class Aim:
    name: str
    aim: str
    measured: str
    met: bool | None  # None: not measured in this run


def aims(r: Results) -> list[Aim]:
    """Issue 13's five aims, each from this run's own figures."""
    found: list[Aim] = []
    full, direct, litellm = r.target("full"), r.target("direct"), r.target("litellm")
    assert full is not None and direct is not None
    ns = full.results["ns_c32"]
    gw_us = ns.cpu_per_request_us()
    side_us = full.side_cpu["ns_c32"] / len(ns.latencies) * 1e6
    if litellm is not None:
        llm_us = litellm.results["ns_c32"].cpu_per_request_us()
        ratio = (gw_us + side_us) / llm_us
        found.append(Aim("CPU per non-stream request, whole system", "≤ 5% of LiteLLM's",
                         f"{gw_us:,.0f} µs gateway + {side_us:,.0f} µs PostgreSQL and Redis = {gw_us + side_us:,.0f} "
                         f"µs vs LiteLLM {llm_us:,.0f} µs: **{ratio:.1%}**", ratio <= 0.05))
    else:
        found.append(Aim("CPU per non-stream request, whole system", "≤ 5% of LiteLLM's", "LiteLLM skipped", None))
    added = (full.results["ns_c1"].quantile("50") - direct.results["ns_c1"].quantile("50")) * 1000
    if r.floor is not None:
        floor = r.floor.quantile("50") * 1000
        found.append(Aim("added p50 at c=1, non-stream", "within 0.5 ms of the two-commit floor",
                         f"+{added:.2f} ms vs floor {floor:.2f} ms: **{added - floor:+.2f} ms**",
                         added - floor <= 0.5))
    rate = full.results["slow_c64"].rate() / direct.results["slow_c64"].rate()
    found.append(Aim("64 slow streams (20 chunks × 5 ms)", "≥ 95% of the direct rate",
                     f"{full.results['slow_c64'].rate():.0f}/s vs direct {direct.results['slow_c64'].rate():.0f}/s: "
                     f"**{rate:.1%}**, p99 {full.results['slow_c64'].quantile('99') * 1000:.0f} ms", rate >= 0.95))
    if r.streams is not None:
        s = r.streams
        ok = s.opened == s.wanted and s.rss_open <= 256 * MIB
        found.append(Aim(f"{s.wanted:,} open streams, one worker", "in ≤ 256 MiB RSS",
                         f"{s.opened:,} open ({s.failed} failed): **{s.rss_open / MIB:.0f} MiB** RSS "
                         f"({s.rss_before / MIB:.0f} MiB before), {s.per_stream_kib():.1f} KiB per stream", ok))
    if r.hot_pool:
        batched, naive = r.hot_pool["group commit"], r.hot_pool["naive"]
        found.append(Aim("one hot pool, reserve+settle pairs/s, c=128, fsync on", "≥ 10,000 pairs/s",
                         f"**{batched[0]:,.0f}** group commit vs {naive[0]:,.0f} naive "
                         f"(x{batched[0] / max(naive[0], 1):.1f}; {naive[1]} naive timeouts)",
                         batched[0] >= 10_000))
    return found


# ---------------------------------------------------------------------------------------------- output

def machine() -> str:
    """CPU model, cores this run could use, memory, kernel, PostgreSQL and Python versions."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal:"))
    try:
        pg = subprocess.run([services._pg_bin("postgres"), "--version"], capture_output=True, text=True,
                            check=False).stdout.strip()
    except RuntimeError:
        pg = "PostgreSQL ?"
    return (f"{os.cpu_count()} × {model}, {mem / 1024 / 1024:.0f} GiB, Linux {platform.release()}, {pg}, "
            f"Python {platform.python_version()}")


def target_table(r: Results) -> list[str]:
    direct = r.target("direct")
    assert direct is not None

    def added(t: Target, phase: str) -> str:
        return "/".join(f"{(t.results[phase].quantile(q) - direct.results[phase].quantile(q)) * 1000:+.2f}"
                        for q in ("50", "99"))

    rows = ["| target | CPU µs / request, non-stream c=32 | per 20-chunk stream c=32 | added p50/p99 ms c=1, "
            "non-stream | stream | 64 slow streams: % of direct, p99, server CPU |",
            "|---|---:|---:|---:|---:|---:|"]
    for t in r.targets:
        ns, st, slow = t.results["ns_c32"], t.results["s_c32"], t.results["slow_c64"]
        cpu_ns, cpu_s = f"{ns.cpu_per_request_us():,.0f}", f"{st.cpu_per_request_us():,.0f}"
        if t.side_pids:
            cpu_ns += f" (+{t.side_cpu['ns_c32'] / len(ns.latencies) * 1e6:,.0f})"
            cpu_s += f" (+{t.side_cpu['s_c32'] / len(st.latencies) * 1e6:,.0f})"
        slow_cell = (f"{slow.rate() / direct.results['slow_c64'].rate():.1%}, {slow.quantile('99') * 1000:.0f} ms, "
                     f"{slow.cpu_percent():.0f}%")
        latency = "—" if t is direct else added(t, "ns_c1")
        stream_latency = "—" if t is direct else added(t, "s_c1")
        rows.append(f"| {t.name} | {cpu_ns} | {cpu_s} | {latency} | {stream_latency} | {slow_cell} |")
    return rows


def slow_budget(r: Results) -> list[str]:
    """Where the 64-slow-streams points go: the whole process tree's CPU per stream against the CPUs it may
    use. When the tree needs more CPU than the pinned core(s) give at the direct rate, the target's rate is
    capped at cores / CPU per stream, whatever it waits for."""
    direct = r.target("direct")
    assert direct is not None
    rows = ["| target | streams/s | % of direct | CPU µs per stream: load + provider | target | PostgreSQL + Redis "
            "| whole tree | pinned CPUs busy (rate × their CPU per stream) | cap on the pinned CPUs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in r.targets:
        slow = t.results["slow_c64"]
        n = max(len(slow.latencies), 1)
        rest = t.rest_cpu.get("slow_c64", 0.0) / n * 1e6
        own = (slow.cpu_seconds or 0.0) / n * 1e6
        side = t.side_cpu.get("slow_c64", 0.0) / n * 1e6
        tree = rest + own + side
        pinned = tree - side if r.db_apart else tree  # the CPU per stream spent on the pinned CPUs
        rows.append(f"| {t.name} | {slow.rate():,.0f} | {slow.rate() / direct.results['slow_c64'].rate():.1%} | "
                    f"{rest:,.0f} | {own:,.0f} | {side:,.0f} | {tree:,.0f} | {slow.rate() * pinned / 1e6:.2f} | "
                    f"{r.cpus * 1e6 / pinned:,.0f}/s |")
    return rows


def one_primary(r: Results) -> list[str]:
    """What one PostgreSQL primary sustains, from this run's figures."""
    full = r.target("full")
    assert full is not None
    ns = full.results["ns_c32"]
    side_us = full.side_cpu["ns_c32"] / len(ns.latencies) * 1e6
    lines = [f"- PostgreSQL + Redis CPU per billed non-stream request: {side_us:,.0f} µs, so one primary core "
             f"serves at most ≈ {1e6 / side_us:,.0f} requests/s (spread over orgs; a 4-core primary ≈ "
             f"{4e6 / side_us:,.0f}/s before I/O limits)."]
    if r.hot_pool:
        lines.append(f"- One org's pool (one hot row): {r.hot_pool['group commit'][0]:,.0f} reserve+settle pairs/s "
                     "through one replica's group commit at c=128. Sharding does not raise it (one org lives on one "
                     "shard, every request of the org touches that row): docs/scaling.md.")
    return lines


def markdown(r: Results, command: str) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` (`python -m bench.report`) on {now}; the whole run took {r.seconds:.0f} s.",
        f"Machine: {machine()}. Load average (1 min) {r.load[0]:.2f} at the start, {r.load[1]:.2f} at the end: "
        "the machine is shared, so absolute rates move; every aim is a ratio to a baseline measured in the same "
        "run. Processes pinned as `bench.gateway_full` does (everything on CPU 0 unless `--cpus`), PostgreSQL "
        "15 with fsync and synchronous_commit on.",
        "",
        "## Aims (issue 13)",
        "",
        "| what | aim | measured in this run | |",
        "|---|---|---|---|",
    ]
    for a in aims(r):
        verdict = "not measured" if a.met is None else ("**met**" if a.met else "not met")
        lines.append(f"| {a.name} | {a.aim} | {a.measured} | {verdict} |")
    lines += ["", "## Every target, side by side", "",
              "direct = the fake provider itself; bare = a raw-ASGI + aiohttp passthrough (the floor); empty = "
              "creditgate with no policy; full = creditgate as `creditgate serve` builds it (in brackets: the CPU "
              "it caused in its PostgreSQL and Redis); litellm = LiteLLM 1.106.2 in front of the same provider. "
              "Added latency is over direct.", "", *target_table(r), ""]
    if r.floor is not None:
        lines.append(f"Two-commit floor on the same PostgreSQL: p50 {r.floor.quantile('50') * 1000:.2f} ms, "
                     f"p99 {r.floor.quantile('99') * 1000:.2f} ms.")
    if r.streams is not None:
        s = r.streams
        lines.append(f"Open streams: {s.opened:,} opened in {s.open_seconds:.1f} s through one worker; after the "
                     "clients left, every one was settled `estimate` "
                     + (f"within {s.settled_seconds:.1f} s." if s.settled_seconds is not None else "NOT within 60 s."))
    if r.hot_pool:
        lines.append("Hot pool: " + ", ".join(f"{d} {v[0]:,.0f} pairs/s ({v[1]} timed out)"
                                             for d, v in r.hot_pool.items()) + ".")
    lines += ["", "## 64 slow streams: where the points go", "",
              f"The load, the provider and the target (and PostgreSQL and Redis, unless `--db-cpus`) share {r.cpus} "
              "CPU(s) here. Each stream's CPU is counted in every process of the tree; \"pinned CPUs busy\" near that "
              "number means the rate is capped by CPU, not by waiting (commits, batches); the cap is what those "
              "CPUs give at that CPU per stream (PostgreSQL's and Redis's left out when `--db-cpus` put them "
              "elsewhere).", "",
              *slow_budget(r), "", "## One PostgreSQL primary", "", *one_primary(r), "",
              "Settlement: every answered request settled exactly once and `creditgate verify` clean: "
              + ("**yes**" if r.settled_ok else "**NO** (see the run's output)") + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="creditgate's benchmarks side by side, against issue 13's aims")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measured phase")
    parser.add_argument("--streams", type=int, default=OPEN_STREAMS, help="streams held open at once")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--cpus", default="0", help="CPUs the gateways, servers and load are pinned to, or 'all'")
    parser.add_argument("--db-cpus", help="CPUs PostgreSQL and Redis are pinned to (default: --cpus)")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="where the results are written ('-': not)")
    args = parser.parse_args()
    from proxy.ledger.verify import main_verify

    started = time.monotonic()
    r = Results(load=(os.getloadavg()[0], 0.0),
                cpus=(os.cpu_count() or 1) if args.cpus == "all" else len(args.cpus.split(",")),
                db_apart=args.db_cpus is not None and args.db_cpus != args.cpus)
    with product(args.cpus, args.db_cpus, "INFO") as made:
        r.floor = asyncio.run(two_commit_floor(services.create_database(made.pg.url, "bench_floor"), args.seconds))
        r.targets = asyncio.run(main_async(args.seconds, [], args.skip_litellm, "INFO", made.seeded.key,
                                           gateway_specs(made.seeded.key, made.side_pids, breakdown=False),
                                           after=streams_step(made, args.streams, r)))
        ledger_dsn = services.create_database(made.pg.url, "bench_ledger")
        unpin(made.pg)
        r.hot_pool = asyncio.run(hot_pool(ledger_dsn, args.seconds, 128))
        counts = asyncio.run(ledger_counts(made.dsn, made.seeded.org_id))
        verify_rc = main_verify(made.dsn) | main_verify(ledger_dsn)
        full = r.target("full")
        assert full is not None
        r.settled_ok = settlement_report(full, counts, verify_rc, extra=r.streams.opened if r.streams else 0)
    r.seconds = time.monotonic() - started
    r.load = (r.load[0], os.getloadavg()[0])
    print("\naims (issue 13)")
    for a in aims(r):
        verdict = "not measured" if a.met is None else ("met" if a.met else "NOT MET")
        print(f"  {a.name:<55} {a.aim:<40} {a.measured.replace('**', '')}  -> {verdict}")
    if args.out != "-":
        Path(args.out).write_text(markdown(r, "make bench"))
        print(f"\nwritten to {args.out}")
    print(f"whole run {r.seconds:.0f} s; load average {r.load[0]:.2f} -> {r.load[1]:.2f}")
    sys.exit(0 if r.settled_ok else 1)


def streams_step(made: Product, wanted: int, r: Results) -> Callable[[list[Target]], Awaitable[None]]:
    """bench.gateway's `after` hook: the open-streams measurement on the full gateway, still running."""
    async def step(targets: list[Target]) -> None:
        full = next(t for t in targets if t.name == "full")
        before = tree_cpu_seconds(full.pid) if full.pid else 0.0
        r.streams = await hold_streams_open(full, made.dsn, made.seeded.org_id, wanted)
        if full.pid:
            print(f"  (the worker spent {tree_cpu_seconds(full.pid) - before:.1f} s of CPU opening, holding and "
                  "settling them)", flush=True)
    return step


if __name__ == "__main__":
    main()
