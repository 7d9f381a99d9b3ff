"""Gateway overhead benchmark (not a test): `python -m bench.gateway [--seconds S] [--chain|--app mod:fn]`.

In one run, against the same fake provider (devstack/fake_provider.py), it measures
(a) the provider directly, (b) a bare raw-ASGI + aiohttp passthrough (the floor), (c) the creditgate
gateway with its chain as configured (empty unless `--chain`), (d) LiteLLM itself; (b)-(c) front the
provider directly, so LiteLLM's ~10 ms do not hide the gateway's cost. Per target: latency p50/p99 at
concurrency 1 and 32 (non-stream and 20-chunk streams; "added" = minus direct), server CPU per
request / per stream (utime+stime of its process tree from /proc, divided by requests), and 64
concurrent slow streams (20 chunks, 5 ms apart): achieved streams/s vs ideal, p99, server CPU%.
Ratios are against the bare passthrough of the same run. 127.0.0.1 only; about 2-3 minutes.

By default everything (client, servers, LiteLLM) is pinned to CPU 0 (`--cpus 0`), like
perf-ceiling.md's `1core` mode: on this VM waking another vCPU costs milliseconds, so unpinned c=1
latencies swing with placement; `--cpus all` measures the whole box instead.

The load client is aiohttp (httpx costs ~1.8 ms CPU per request and collapses under 64 slow streams:
shared/research/perf-ceiling.md), and it shares the machine's 2 cores with the servers, so absolute
rates are pessimistic; CPU per request is the robust number.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from bench.gateway_load import Phase, run_phase
from devstack import services

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
MESSAGES = [{"role": "user", "content": "hi there"}]
NONSTREAM = {"model": "fake-small", "messages": MESSAGES, "fake_chunks": 6}
STREAM = {"model": "fake-small", "messages": MESSAGES, "fake_chunks": 20, "stream": True}
SLOW = {**STREAM, "fake_delay_ms": 5}
SLOW_IDEAL_SECONDS = 19 * 0.005  # 20 chunks, 5 ms between them


@dataclass
class Target:
    name: str
    url: str
    pid: int | None  # the server whose CPU is measured (None: not measured)
    key: str = "sk-bench-client"
    results: dict[str, Phase] = field(default_factory=dict)
    side_pids: tuple[int, ...] = ()  # other servers it needs (PostgreSQL, Redis): their CPU is reported apart
    side_cpu: dict[str, float] = field(default_factory=dict)  # phase -> CPU seconds of side_pids
    # phase -> CPU seconds of the rest of the tree: the load client (this process) and, for a target in front
    # of it, the fake provider. With the target's and side_pids', the whole tree's CPU (bench.report)
    rest_cpu: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    """One gateway process to measure: `plug` is its bench.gateway_servers arguments (--chain/--app)."""

    name: str
    plug: list[str]
    key: str
    side_pids: tuple[int, ...] = ()


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of `pid` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
        todo += children.get(current, [])
    return total


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)


async def wait_ready(url: str, key: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.post(f"{url}/v1/chat/completions", data=orjson.dumps(NONSTREAM),
                                        headers={"authorization": f"Bearer {key}"}) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


async def measure(target: Target, seconds: float, provider_pid: int | None = None) -> None:
    """Runs the plan against `target`; `provider_pid`: the fake provider behind it (None: it is the target)."""
    plan = [
        ("ns_c1", NONSTREAM, 1), ("ns_c32", NONSTREAM, 32),
        ("s_c1", STREAM, 1), ("s_c32", STREAM, 32), ("slow_c64", SLOW, 64),
    ]
    target.results["warmup"] = await run_phase(target.url, target.key, NONSTREAM, 8, seconds / 3)
    for name, body, concurrency in plan:
        before = tree_cpu_seconds(target.pid) if target.pid else 0.0
        side_before = sum(tree_cpu_seconds(pid) for pid in target.side_pids)
        rest_before = time.process_time() + (tree_cpu_seconds(provider_pid) if provider_pid else 0.0)
        phase = await run_phase(target.url, target.key, body, concurrency, seconds)
        target.rest_cpu[name] = time.process_time() + (tree_cpu_seconds(provider_pid) if provider_pid else 0.0) \
            - rest_before
        phase.cpu_seconds = (tree_cpu_seconds(target.pid) - before) if target.pid else None
        if target.side_pids:
            target.side_cpu[name] = sum(tree_cpu_seconds(pid) for pid in target.side_pids) - side_before
        target.results[name] = phase
        print(f"  {target.name:8} {name:9} {phase.summary()}", flush=True)


def report(targets: list[Target]) -> None:
    direct, bare = targets[0], targets[1]

    def added(t: Target, phase: str, q: str) -> str:
        return f"{(t.results[phase].quantile(q) - direct.results[phase].quantile(q)) * 1000:+.2f}"

    print("\nadded latency over direct, ms (p50 / p99)")
    print(f"{'target':10} {'ns c=1':>16} {'ns c=32':>16} {'stream c=1':>16} {'stream c=32':>16}")
    for t in targets[1:]:
        cells = [f"{added(t, p, '50')} / {added(t, p, '99')}" for p in ("ns_c1", "ns_c32", "s_c1", "s_c32")]
        print(f"{t.name:10} " + " ".join(f"{c:>16}" for c in cells))
    print("\nserver CPU: µs per non-stream request (c=32) / per 20-chunk stream (c=32); ratio to bare")
    for t in targets[1:]:
        ns, s = t.results["ns_c32"].cpu_per_request_us(), t.results["s_c32"].cpu_per_request_us()
        rns, rs = ns / bare.results["ns_c32"].cpu_per_request_us(), s / bare.results["s_c32"].cpu_per_request_us()
        print(f"{t.name:10} {ns:8.0f} / {s:8.0f}   x{rns:.2f} / x{rs:.2f}")
    for t in targets:
        if t.side_pids:
            side = [t.side_cpu[p] / len(t.results[p].latencies) * 1e6 for p in ("ns_c32", "s_c32")]
            print(f"{'':10} + {side[0]:.0f} / {side[1]:.0f} µs in its PostgreSQL and Redis "
                  f"({t.name}; not counted above)")
    print(f"\n64 concurrent slow streams (20 chunks x 5 ms); ideal {64 / SLOW_IDEAL_SECONDS:.0f} streams/s")
    for t in targets:
        p = t.results["slow_c64"]
        cpu = f"{p.cpu_percent():5.1f}% of a core" if p.cpu_seconds is not None else "n/a"
        ratio = p.rate() / direct.results["slow_c64"].rate()
        print(f"{t.name:10} {p.rate():7.1f}/s ({p.rate() * SLOW_IDEAL_SECONDS / 64:5.1%} of ideal, "
              f"{ratio:5.1%} of direct)  p99 {p.quantile('99') * 1000:6.1f} ms  server CPU {cpu}")


async def main_async(seconds: float, plug: list[str], skip_litellm: bool, log_level: str, key: str,
                     gateways: Sequence[GatewaySpec] | None = None,
                     after: Callable[[list[Target]], Awaitable[None]] | None = None) -> list[Target]:
    """Runs the benchmark and prints the tables; `gateways` (default: one, "gateway", from `plug` and
    `key`) are the gateway processes measured between the bare passthrough and LiteLLM. `after` runs
    once the tables are printed, while every target is still up (bench.report's open streams)."""
    gateways = gateways if gateways is not None else [GatewaySpec("gateway", plug, key)]
    logs = services.logdir() / time.strftime("bench-%Y%m%d-%H%M%S")  # kept for reading, in the run folder, not /tmp
    logs.mkdir(exist_ok=True)
    provider = services.start_fake_provider()
    procs: list[subprocess.Popen[bytes]] = []
    litellm: services.Service | None = None
    try:
        bare_port = services.free_port()
        py = sys.executable
        procs.append(spawn([py, "-m", "bench.gateway_servers", "bare", "--port", str(bare_port),
                            "--upstream", provider.url], logs / "bare.log"))
        targets = [
            Target("direct", provider.url, provider.proc.pid),
            Target("bare", f"http://127.0.0.1:{bare_port}", procs[0].pid),
        ]
        for gw in gateways:
            gw_port = services.free_port()
            gw_argv = [py, "-m", "bench.gateway_servers", "gateway", "--port", str(gw_port), "--upstream",
                       provider.url, "--log-level", log_level]
            procs.append(spawn(gw_argv + gw.plug, logs / f"{gw.name}.log"))
            targets.append(Target(gw.name, f"http://127.0.0.1:{gw_port}", procs[-1].pid, key=gw.key,
                                  side_pids=gw.side_pids))
        if not skip_litellm:
            litellm = services.start_litellm(services.render_litellm_config(provider.url, logs / "litellm.yaml"))
            targets.append(Target("litellm", litellm.url, litellm.proc.pid, key=services.MASTER_KEY))
        for t in targets:
            await wait_ready(t.url, t.key)
        print(f"bench: {seconds:g} s per phase; CPUs {sorted(os.sched_getaffinity(0))}; logs in {logs}")
        for t in targets:
            await measure(t, seconds, provider.proc.pid if t.pid != provider.proc.pid else None)
        report(targets)
        if after is not None:
            await after(targets)
        return targets
    finally:
        for proc in procs:
            services.Service("bench", proc, 0, "", logs / "x").stop()
        if litellm is not None:
            litellm.stop()
        provider.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="creditgate gateway overhead benchmark")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each measured phase")
    parser.add_argument("--chain", help="module:factory, factory(app_state) -> the policy chain")
    parser.add_argument("--app", help="module:factory, factory(upstream_url) -> a fully wired gateway app")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--gateway-key", default="sk-bench-client", help="API key the load sends to the gateway")
    parser.add_argument("--gateway-log-level", default="INFO", help="WARNING drops the per-request access line")
    parser.add_argument("--cpus", default="0", help="comma-separated CPUs every process is pinned to, or 'all'")
    args = parser.parse_args()
    if args.cpus != "all":
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})  # children inherit it
    plug = ["--chain", args.chain] if args.chain else ["--app", args.app] if args.app else []
    asyncio.run(main_async(args.seconds, plug, args.skip_litellm, args.gateway_log_level, args.gateway_key))


if __name__ == "__main__":
    main()
