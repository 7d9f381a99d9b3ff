"""The gateway benchmark with the whole product: `python -m bench.gateway_full [--seconds S]`.

bench.gateway's run (direct, bare passthrough, LiteLLM; same fake provider, same load, same tables)
with two creditgate gateways side by side:
- `empty`: create_app with the empty chain (the core: body, forward, stream, meter; no money);
- `full`: create_app as `creditgate serve` builds it (proxy/app.py): authenticate the API key
  (key cache + Redis), resolve the org, power level and model rewrite, BYOK check, reserve and
  settle in PostgreSQL (group commit), the sweeper running.
It starts its own PostgreSQL (fsync and synchronous_commit on, as in production) and Redis on
127.0.0.1, migrates, and seeds one starter-tier org with ample credit, one member and one API key,
so nothing is refused. The load asks for `fake-small`, priced in the repo's litellm_config.yaml.
The CPU table counts the gateway process only; the PostgreSQL + Redis CPU the full chain causes is
printed on its own line. Afterwards it reads the ledger: every answered request must have exactly
one usage record and a posted hold, and `creditgate verify` must be clean (exit 1 otherwise).
Everything it starts is stopped at the end; about 2-3 minutes.

`--breakdown` adds three gateways that run a prefix of the same chain (each in its own process, with
the same PostgreSQL and Redis): `auth` (Authenticate), `+org` (+ ResolveOrg), `nocredit` (all but
ReserveCredits: + RateLimit, RewriteModel and InjectProviderKey): what each step costs. About a
minute more. The starter tier has no rate limits, so RateLimit returns at once; `--rate-limits` runs
the gateways with a copy of policy.yaml whose starter tier has limits never reached, to include its
Redis round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette

from bench.gateway import GatewaySpec, Target, main_async
from devstack import services
from devstack.stack import gateway_env

# The bench's tables start empty and grow by thousands of rows a minute. PL/pgSQL caches each statement's
# plan per connection until the table is analyzed; with autovacuum's default 1-minute nap, ledger_batch's
# `holds JOIN unnest(...)` kept a sequential-scan plan made for the empty table for the whole run (1.7 ms
# of PostgreSQL CPU per reserve+settle pair at 9,000 holds, 0.09 ms once analyzed; issue 13's notes). A
# production ledger's tables are large and analyzed: a 1 s nap makes the bench's plans what production runs.
STEADY_STATS = {"autovacuum_naptime": "1"}
CREDIT_MILLICREDITS = 10**12  # a billion credits: a few hundred thousand requests cost far less
ACTOR = "bench"


def full_app(upstream: str) -> Starlette:
    """The whole product (create_app without `policies`) from the CREDITGATE_* environment that
    `main` exports, forwarding to `upstream` (the bench's fake provider) instead of LiteLLM."""
    from proxy.app import create_app
    from proxy.config.settings import Settings

    return create_app(dataclasses.replace(Settings.from_env(), upstream_url=upstream.rstrip("/")))


def _prefix_app(upstream: str, stop: str, *, inclusive: bool) -> Starlette:
    """The whole product, but its chain cut at the policy class named `stop` (kept if `inclusive`).
    Bench only: this replaces the composition root's `default_policies` in this gateway's own process."""
    import policies as chain_module
    from proxy import app

    whole = chain_module.default_policies

    def policies(**parts: Any) -> tuple[Any, ...]:
        chain = whole(**parts)
        names = [type(p).__name__ for p in chain]
        return chain[:names.index(stop) + inclusive]  # ValueError (the gateway does not start): renamed

    setattr(app, "default_policies", policies)  # noqa: B010 - for this process only; proxy.app imported the name
    return full_app(upstream)


def auth_app(upstream: str) -> Starlette:
    return _prefix_app(upstream, "Authenticate", inclusive=True)


def org_app(upstream: str) -> Starlette:
    return _prefix_app(upstream, "ResolveOrg", inclusive=True)


def nocredit_app(upstream: str) -> Starlette:
    return _prefix_app(upstream, "ReserveCredits", inclusive=False)


def rate_limited_policy(source: Path, target: Path, tier: str) -> Path:
    """A copy of the policy file whose `tier` has rpm/tpm limits the bench never reaches, so
    RateLimit does its Redis round trips on every request."""
    import yaml

    raw = yaml.safe_load(source.read_text())
    raw["tiers"][tier].update({"rpm": 10**9, "tpm": 10**15})
    target.write_text(yaml.safe_dump(raw, sort_keys=False))
    return target


@dataclass(frozen=True, slots=True)
class Seeded:
    org_id: str
    user_id: str
    key: str  # the API key itself: sent by the load, never printed


async def seed(dsn: str) -> Seeded:
    """Migrates `dsn`, then one starter org with CREDIT_MILLICREDITS, one default member without an
    allocation cap, and one API key bound to that org (through the product's own stores)."""
    from proxy.db.migrate import migrate
    from proxy.directory.pg import PgDirectory
    from proxy.ledger.pg import PgLedger

    await migrate(dsn)
    ledger = await PgLedger.connect(dsn, hold_ttl_seconds=120, max_size=2)
    try:
        directory = PgDirectory(ledger.db)
        org = str((await directory.create_org("Bench Org", "starter", ACTOR))["id"])
        user = str((await directory.create_user("bench@example.com", "Bench Member", ACTOR))["id"])
        member = {"role": "member", "allocation_millicredits": None, "allocation_period": "none", "default": True}
        await directory.put_member(org, user, member, ACTOR)
        await ledger.grant(org, CREDIT_MILLICREDITS, "bench credit", "bench-seed", None, ACTOR)
        key = str((await directory.create_key(user, org, "bench", ACTOR))["key"])
    finally:
        await ledger.close()
    return Seeded(org, user, key)


async def ledger_counts(dsn: str, org_id: str) -> dict[str, int]:
    """Usage records, holds per state and what was charged, for the org."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        counts = {"usage_records": await conn.fetchval(
            "SELECT count(*) FROM creditgate.usage_records WHERE org_id = $1", org_id)}
        counts["charged_millicredits"] = await conn.fetchval(
            "SELECT coalesce(sum(charged), 0) FROM creditgate.usage_records WHERE org_id = $1", org_id)
        for state in ("pending", "posted", "voided", "expired"):
            counts[f"holds_{state}"] = await conn.fetchval(
                "SELECT count(*) FROM creditgate.holds WHERE org_id = $1 AND state = $2::creditgate.hold_state",
                org_id, state)
    finally:
        await conn.close()
    return {k: int(v) for k, v in counts.items()}


def settlement_report(full: Target, counts: dict[str, int], verify_rc: int, *, extra: int = 0) -> bool:
    """Prints the settlement check; True when every answered request was settled exactly once. `extra`:
    requests answered outside `full.results` (bench.report's open streams, settled `estimate`)."""
    answered = sum(len(p.latencies) for p in full.results.values()) + 1 + extra  # + wait_ready's one 200
    errors = sum(p.errors for p in full.results.values())
    print(f"\nsettlement (full chain): {answered} requests answered 200 (incl. warm-up and the readiness probe), "
          f"{errors} errors")
    print(f"  usage records {counts['usage_records']}, holds posted {counts['holds_posted']} / pending "
          f"{counts['holds_pending']} / voided {counts['holds_voided']} / expired {counts['holds_expired']}, "
          f"charged {counts['charged_millicredits']:,} millicredits")
    ok = (errors == 0 and verify_rc == 0 and counts["usage_records"] == answered == counts["holds_posted"]
          and counts["holds_pending"] == counts["holds_voided"] == counts["holds_expired"] == 0)
    print("  every request settled exactly once" if ok else "  SETTLEMENT MISMATCH (see above)")
    return ok


def gateway_specs(key: str, side_pids: tuple[int, ...], *, breakdown: bool) -> list[GatewaySpec]:
    """empty chain, [the chain's prefixes,] the full product; the latter measured with PostgreSQL and Redis."""
    prefixes = [("auth", "auth_app"), ("+org", "org_app"), ("nocredit", "nocredit_app")] if breakdown else []
    return [
        GatewaySpec("empty", [], "sk-bench-client"),
        *(GatewaySpec(name, ["--app", f"bench.gateway_full:{fn}"], key, side_pids) for name, fn in prefixes),
        GatewaySpec("full", ["--app", "bench.gateway_full:full_app"], key, side_pids),
    ]


def _pin(cpus: str) -> None:
    if cpus != "all":
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})  # children inherit it


@dataclass(frozen=True, slots=True)
class Product:
    """What `product()` started: PostgreSQL (fsync on) and Redis, the migrated, seeded database."""

    pg: services.Service
    redis: services.Service
    dsn: str
    seeded: Seeded

    @property
    def side_pids(self) -> tuple[int, ...]:
        return (self.pg.proc.pid, self.redis.proc.pid)


@contextmanager
def product(cpus: str, db_cpus: str | None, log_level: str, *, rate_limits: bool = False) -> Iterator[Product]:
    """Starts PostgreSQL (pinned to `db_cpus`, default `cpus`) and Redis, migrates and seeds, exports the
    CREDITGATE_* environment `full_app` reads, pins this process (and so its children) to `cpus`, and
    stops both at the end."""
    _pin(db_cpus or cpus)
    pg = services.start_postgres(fsync=True, extra=STEADY_STATS)
    redis: services.Service | None = None
    workdir = Path(tempfile.mkdtemp(prefix="creditgate-bench-full-"))
    try:
        redis = services.start_redis()
        _pin(cpus)
        dsn = services.create_database(pg.url, "creditgate_bench")
        seeded = asyncio.run(seed(dsn))
        policy = None
        if rate_limits:
            policy = rate_limited_policy(services.ROOT / "policy.yaml", workdir / "policy.yaml", "starter")
        os.environ.update(gateway_env(dsn, redis.url, "http://127.0.0.1:9", policy=policy, extra={
            "CREDITGATE_LOG_LEVEL": log_level}))  # the upstream is replaced by full_app
        print(f"PostgreSQL {pg.url.rsplit('@', 1)[1]} (fsync on), Redis, org {seeded.org_id} "
              f"seeded with {CREDIT_MILLICREDITS:,} millicredits", flush=True)
        yield Product(pg, redis, dsn, seeded)
    finally:
        if redis is not None:
            redis.stop()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="creditgate gateway benchmark with the full policy chain")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each measured phase")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--gateway-log-level", default="INFO", help="WARNING drops the per-request access line")
    parser.add_argument("--cpus", default="0", help="CPUs the gateways, servers and load are pinned to, or 'all'")
    parser.add_argument("--db-cpus", help="CPUs PostgreSQL and Redis are pinned to (default: --cpus)")
    parser.add_argument("--breakdown", action="store_true", help="also measure prefixes of the chain")
    parser.add_argument("--rate-limits", action="store_true", help="give the starter tier (unreached) rate limits")
    args = parser.parse_args()
    from proxy.ledger.verify import main_verify

    started = time.monotonic()
    with product(args.cpus, args.db_cpus, args.gateway_log_level, rate_limits=args.rate_limits) as made:
        gateways = gateway_specs(made.seeded.key, made.side_pids, breakdown=args.breakdown)
        targets = asyncio.run(main_async(args.seconds, [], args.skip_litellm, args.gateway_log_level,
                                         made.seeded.key, gateways))
        counts = asyncio.run(ledger_counts(made.dsn, made.seeded.org_id))
        verify_rc = main_verify(made.dsn)
        ok = settlement_report(next(t for t in targets if t.name == "full"), counts, verify_rc)
    print(f"\nwhole run {time.monotonic() - started:.0f} s; load average {os.getloadavg()[0]:.2f} "
          f"(1 min) at the end")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
