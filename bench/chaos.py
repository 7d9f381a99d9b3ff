"""`make chaos`: the money stays right while the stack is broken on purpose, under a seeded mixed load.

    python -m bench.chaos --seed 7 --seconds 180     # make chaos
    python -m bench.chaos --seed 1 --seconds 60      # the short version tests/e2e/test_chaos.py runs

Two gateway replicas, LiteLLM, PostgreSQL, Redis, the fake provider and Prometheus scraping both replicas
(bench.cluster) take a bounded load (bench.load) while, in sequence: a replica is SIGKILLed mid-stream and
started again; the other gets SIGTERM (taken out of the load first, as readiness does), drains and is
started again; PostgreSQL is stopped and started; Redis likewise; LiteLLM is SIGKILLed mid-stream and started
again; then the provider is slow, failing, and dropping connections for a while each. After each fault and
at the end the figures of bench.audit are printed; the exit status is 1 when any is not as the contract says.

Everything runs on 127.0.0.1 and is bounded: the load by `--seconds` and `--max-requests`, each wait by a
deadline. The seed fixes the population and the sequence of requests; the faults land where the machine's
timing puts them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from bench import audit
from bench import cluster as stack
from bench.load import Answer, Load, Plan, Population, Spec, seed_population, send, store_byok_keys

LONG_STREAM_CHUNKS = 200
SETTLE_MARGIN = 3.0  # seconds beyond hold expiry + one sweep before an answer's record must exist


@dataclass
class Run:
    cluster: stack.Cluster
    population: Population
    load: Load
    prices: audit.Prices
    started: float
    extra: int = 0  # the driver's own long streams
    problems: list[str] = field(default_factory=list)  # what a fault itself got wrong (a drain's exit status)

    @classmethod
    def start(cls, c: stack.Cluster, tag: str, seed: int, concurrency: int, max_requests: int,
              mixed_faults: float = 0.0) -> Run:
        """The run's population seeded through replica 0 (`tag` names its ids), BYOK keys stored, prices read from
        the cluster's own files, and a seeded load on every replica (not started yet)."""
        admin = c.admin()
        try:
            population = seed_population(admin, tag)
        finally:
            admin.close()
        store_byok_keys(c.replicas[0].url, population)
        prices = audit.Prices.read(c.litellm_config, Path(c.env["CREDITGATE_POLICY_CONFIG"]))
        load = Load([r.url for r in c.replicas], Plan(seed, population, mixed_faults=mixed_faults), concurrency,
                    max_requests, admin_token=c.admin_token)
        return cls(c, population, load, prices, time.monotonic())

    def figures(self, title: str, final: bool = False) -> audit.Figures:
        cutoff = time.time() - (stack.HOLD_TTL_SECONDS + stack.SWEEP_INTERVAL_SECONDS + SETTLE_MARGIN)
        answers = list(self.load.answers)
        orgs = {m.org_id for m in self.population.members}
        ledger = asyncio.run(audit.read_ledger(self.cluster.dsn, orgs, stack.SWEEP_INTERVAL_SECONDS))
        f = audit.figures(answers, ledger, self.population, list(self.load.grants), self.prices,
                          verified=audit.verify(self.cluster.dsn), settled_before=float("inf") if final else cutoff)
        audit.print_figures(f"{title} (t={time.monotonic() - self.started:.0f} s)", f)
        return f

    def long_stream_then(self, replica: int, action: Callable[[], None], label: str) -> None:
        """A long stream through `replica` (a rich member), and `action` once it is past a checkpoint."""
        member = next(m for m in self.population.members if m.label == "rich0")
        self.extra += 1
        spec = Spec(1_000_000 + self.extra, member, "chat/completions", True, "fake-medium", "balanced",
                    "tell me a long story", None, LONG_STREAM_CHUNKS, 25, True, None, {})
        rid = f"cg-{self.population.run}-{label}"

        async def go() -> Answer:
            async with httpx.AsyncClient(timeout=60) as client:
                task = asyncio.ensure_future(send(client, self.cluster.replicas[replica].url, spec, rid, replica,
                                                  self.load.fault))
                # past one checkpoint (hold ttl / 3), with chunks flowing
                await asyncio.sleep(stack.HOLD_TTL_SECONDS / 3 + 0.5)
                await asyncio.to_thread(action)
                return await task

        answer = asyncio.run(go())
        self.load.answers.append(answer)
        ending = "cut" if answer.cut else "error event" if answer.error_event else "[DONE]" if answer.done else "?"
        print(f"  the driver's long stream {rid}: status {answer.status}, ended by {ending}", flush=True)


def pause(seconds: float) -> None:
    time.sleep(max(0.0, seconds))


FAULTS = ("kill-replica", "term-replica", "postgres", "redis", "litellm", "slow", "failing", "dropping")


def faults(run: Run, gap: float, names: Sequence[str] = FAULTS) -> list[tuple[str, Callable[[], None]]]:
    """The faults, in this order; each returns once the part it broke is back."""
    c, load = run.cluster, run.load

    def kill_replica() -> None:
        run.long_stream_then(0, lambda: c.kill_replica(0), "sigkill-stream")
        load.routable = [1]
        pause(1.0)
        c.start_replica(0)
        load.routable = [0, 1]

    def terminate_replica() -> None:
        load.routable = [0]  # readiness turns 503 first; the balancer stops sending new requests
        code = c.terminate_replica(1)
        print(f"  replica 1 drained and exited {code}", flush=True)
        if code != 0:
            run.problems.append(f"replica 1 exited {code} after SIGTERM")
        c.start_replica(1)
        load.routable = [0, 1]

    def restart_postgres() -> None:
        c.stop_postgres()
        pause(min(3.0, gap / 3))
        c.start_postgres()
        for r in c.replicas:
            stack.wait_ready(r.url)

    def restart_redis() -> None:
        c.stop_redis()
        pause(min(2.0, gap / 3))
        c.start_redis()

    def kill_litellm() -> None:
        run.long_stream_then(0, c.kill_litellm, "litellm-killed-stream")
        c.start_litellm()
        for r in c.replicas:
            stack.wait_ready(r.url)

    def provider(mode: str) -> Callable[[], None]:
        def phase() -> None:
            load.fault = mode
            pause(gap)
            load.fault = "none"
        return phase

    steps = {"kill-replica": ("SIGKILL replica 0 mid-stream, restarted", kill_replica),
             "term-replica": ("SIGTERM replica 1, restarted", terminate_replica),
             "postgres": ("PostgreSQL restarted", restart_postgres), "redis": ("Redis restarted", restart_redis),
             "litellm": ("LiteLLM SIGKILLed mid-stream, restarted", kill_litellm),
             "slow": ("provider slow", provider("slow")), "failing": ("provider failing", provider("failing")),
             "dropping": ("provider dropping connections", provider("dropping"))}
    return [steps[name] for name in names]


def quiesce(run: Run, timeout: float) -> None:
    """After the load: wait until no hold of the run is pending (bounded: ttl + sweeps + the spool's replay)."""
    deadline = time.monotonic() + timeout
    orgs = sorted({m.org_id for m in run.population.members})

    async def pending() -> int:
        conn = await asyncpg.connect(run.cluster.dsn)
        try:
            return int(await conn.fetchval(
                "SELECT count(*) FROM creditgate.holds WHERE state = 'pending' AND org_id = ANY($1)", orgs))
        finally:
            await conn.close()

    while time.monotonic() < deadline and asyncio.run(pending()):
        time.sleep(0.5)


def prometheus_lines(c: stack.Cluster) -> list[str]:
    up = c.prometheus_query('up{job="creditgate"} == 1')
    overage = c.prometheus_query("sum(creditgate_overage_millicredits_total)")
    requests = c.prometheus_query("sum by (status) (creditgate_requests_total)")
    return [f"targets up {len(up)} of {len(c.replicas)}",
            f"overage counted {overage[0]['value'][1] if overage else 0} millicredits",
            "requests since each replica's last start: "
            + ", ".join(f"{r['metric'].get('status')}: {r['value'][1]}" for r in requests)]


def chaos(seed: int, seconds: float, max_requests: int, concurrency: int, names: Sequence[str] = FAULTS) -> int:
    """One run; 0 when every figure after every fault is as the contract says. The load lasts about `seconds`
    plus what the restarts take (LiteLLM boots for tens of seconds on a busy machine)."""
    print(f"chaos: seed {seed}, {seconds:.0f} s of load, at most {max_requests} requests, {concurrency} at a time, "
          f"faults: {', '.join(names)}", flush=True)
    c = stack.start_cluster()
    try:
        run = Run.start(c, f"s{seed}-{int(time.time())}", seed, concurrency, max_requests)
        load = run.load
        gap = seconds / (len(names) + 2)
        steps = faults(run, max(2.0, gap), names)
        load.start()
        pause(gap)
        wrong: list[str] = []
        for title, fault in steps:
            load.phase = title
            fault()
            pause(gap)
            wrong += [f"{title}: {w}" for w in run.figures(f"after {title}").wrong()]
        load.stop()
        quiesce(run, stack.HOLD_TTL_SECONDS + 30)
        final = run.figures("end of the run", final=True)
        wrong += [f"end: {w}" for w in final.wrong()] + run.problems
        print("\nPrometheus (scraping both replicas): " + "; ".join(prometheus_lines(c)), flush=True)
        elapsed = time.monotonic() - run.started
        print(f"\nchaos: seed {seed}, {len(load.answers)} requests in {elapsed:.0f} s: "
              + ("every figure as the contract says" if not wrong else "WRONG: " + "; ".join(wrong)), flush=True)
        return 1 if wrong else 0
    finally:
        c.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="creditgate under faults: the money figures after each one")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the load (default 180)")
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"some of {','.join(FAULTS)}, in this order")
    args = parser.parse_args(argv)
    names = [n for n in args.faults.split(",") if n]
    if unknown := set(names) - set(FAULTS):
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    return chaos(args.seed, args.seconds, args.max_requests, args.concurrency, names)


if __name__ == "__main__":
    raise SystemExit(main())
