"""`make bench-correctness`: the money figures of a fixed seed and a few thousand requests through the real
stack, as a table (plain, then Markdown for the README).

    python -m bench.correctness --seed 2026 --requests 3000     # make bench-correctness

Two replicas, LiteLLM, PostgreSQL, Redis and the fake provider (bench.cluster); the seeded mixed load of
bench.load (streams and not, every power level and paid tier, named models and `auto`, BYOK, allocations and a
pool that run dry, clients that leave mid-stream), 5% of requests failed by the provider (slow, failing or
dropping the connection), and replica 0 SIGKILLed once mid-stream halfway through (so the sweeper settles
what it held: `checkpoint`, `prompt_only`). Then, from the ledger (bench.audit): overspend, false refusals,
charges that differ from the contract's formula computed here from the YAML text with `Fraction`s, overage,
2xx answers without exactly one usage record, settlements by usage source. Exit 1 when any figure the contract
fixes is not 0.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench import audit
from bench import cluster as stack
from bench.chaos import Run, quiesce

COMMAND = "make bench-correctness"


def table(f: audit.Figures, seconds: float) -> list[tuple[str, str, str]]:
    """(figure, value, what the contract says) rows."""
    ok = sum(n for s, n in f.by_status.items() if 200 <= s < 300)
    refused = f.by_status.get(402, 0)
    r = f.refusals
    src = f.sources
    return [
        ("requests", f"{f.answers:,} in {seconds:.0f} s", ""),
        ("answered 2xx / 402 / other", f"{ok:,} / {refused:,} / {f.answers - ok - refused:,}", ""),
        ("overspend (pools + allocations + keys), millicredits",
         f"{f.overspend_pools + f.overspend_allocations + f.overspend_keys}", "0"),
        ("false refusals", f"{len(r.false) + len(r.unknown_hold) + len(r.hold_differs)} of {r.checked:,} 402s", "0"),
        ("charges differing from the formula", f"{len(f.charges_differing)} of {f.charges_checked:,}", "0"),
        ("overage, millicredits", f"{f.overage_millicredits}", "0"),
        ("2xx answers without exactly one usage record", f"{len(f.ok_without_one_record)} of {f.ok_checked:,}", "0"),
        ("error answers charged", f"{len(f.errors_charged)}", "0"),
        ("holds pending past expiry + one sweep", f"{f.overdue_holds}", "0"),
        ("`creditgate verify`", "clean" if f.verify_ok else "FAILED", "clean"),
        ("settlements by usage source", f"provider {src['provider']:,}, estimate {src['estimate']:,}, "
         f"checkpoint {src['checkpoint']:,}, prompt_only {src['prompt_only']:,}", ""),
    ]


def print_table(rows: list[tuple[str, str, str]], seed: int, requests: int) -> None:
    width = max(len(a) for a, _, _ in rows)
    vwidth = max(len(b) for _, b, _ in rows)
    print()
    for name, value, rule in rows:
        print(f"  {name:<{width}}  {value:<{vwidth}}  {'contract: ' + rule if rule else ''}")
    print(f"\n| correctness (seed {seed}, {requests:,} requests) | measured | contract |\n|---|---:|---:|")
    for name, value, rule in rows:
        print(f"| {name} | {value} | {rule} |")
    print(f"\n`{COMMAND}` (= `python -m bench.correctness --seed {seed} --requests {requests}`)", flush=True)


def correctness(seed: int, requests: int, concurrency: int, deadline: float) -> int:
    print(f"bench-correctness: seed {seed}, {requests} requests, {concurrency} at a time", flush=True)
    c = stack.start_cluster(prometheus=False)
    try:
        run = Run.start(c, f"c{seed}-{int(time.time())}", seed, concurrency, requests, mixed_faults=0.05)
        load, population, prices = run.load, run.population, run.prices
        load.start()
        stop_at = time.monotonic() + deadline
        while len(load.answers) < requests // 2 and not load.finished() and time.monotonic() < stop_at:
            time.sleep(0.2)

        def kill() -> None:
            c.kill_replica(0)
            load.routable = [1]

        run.long_stream_then(0, kill, "sigkill-stream")
        c.start_replica(0)
        load.routable = [0, 1]
        while not load.finished() and time.monotonic() < stop_at:
            time.sleep(0.2)
        load.stop()
        seconds = time.monotonic() - run.started
        quiesce(run, stack.HOLD_TTL_SECONDS + 30)
        orgs = {m.org_id for m in population.members}
        ledger = asyncio.run(audit.read_ledger(c.dsn, orgs, stack.SWEEP_INTERVAL_SECONDS))
        f = audit.figures(list(load.answers), ledger, population, list(load.grants), prices,
                          verified=audit.verify(c.dsn), settled_before=float("inf"))
        audit.print_figures("details", f)
        print_table(table(f, seconds), seed, requests)
        return 1 if f.wrong() else 0
    finally:
        c.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="creditgate's money figures for a fixed seed through the real stack")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds the load may take at most")
    args = parser.parse_args(argv)
    return correctness(args.seed, args.requests, args.concurrency, args.deadline)


if __name__ == "__main__":
    raise SystemExit(main())
