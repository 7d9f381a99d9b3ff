"""The figures `make chaos` and `make bench-correctness` print, from the ledger and the driver's own record of
every answer (bench.load.Answer). None of them trusts the gateway's arithmetic:

- `verify`: `creditgate verify` run as a command (its exit status).
- overspend (CONTRACT.md: credit spent beyond what was granted, overage included): per org, the usage records'
  charges against the grants minus what expiry forfeited; per member with an allocation, the same against it.
- overage: charges above their hold, or recorded as overage (a defect even when a grant nets it).
- every 2xx answer has exactly one usage record (answers that ended long enough ago for any settlement path:
  a stream's settle, the spool's replay, the sweeper past the hold's expiry); error answers charged.
- holds still pending past their expiry plus one sweep interval (database clock).
- false refusals (CONTRACT.md: a 402 while the pool's and the allocation's available credit both covered the
  request's hold), decided from the journal, see `false_refusals`.
- charges that differ from the contract's formula computed here, from the YAML text with `Fraction`s
  (`Prices`), and provider usage that differs from what the fake provider reports for that request.
- how many settlements each usage source made.
"""

from __future__ import annotations

import bisect
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import asyncpg
import yaml

from bench.load import Answer, Grant, Population
from devstack import services

CLOCK_SLACK = 0.05  # seconds: PostgreSQL's now() and the driver's time.time() read the same clock


# ------------------------------------------------------------------ the contract's formula, independently


@dataclass(frozen=True, slots=True)
class Prices:
    """Prices, markups and multipliers read from the YAML text as exact fractions (BaseLoader keeps every
    scalar a string: no binary float ever touches a price)."""

    deployment: dict[str, tuple[Fraction, Fraction]]  # deployment id -> (input, output) USD per token
    models: dict[str, list[str]]  # model name -> its deployment ids
    markup: dict[str, Fraction]  # tier -> markup
    levels: dict[str, tuple[Fraction, tuple[str, ...]]]  # level -> (multiplier, models)
    caps: dict[str, int]  # level -> max_tokens
    credits_per_usd: Fraction

    @classmethod
    def read(cls, litellm_config: Path, policy: Path) -> Prices:
        config = yaml.load(litellm_config.read_text(), Loader=yaml.BaseLoader)  # noqa: S506 - BaseLoader is safe
        deployment: dict[str, tuple[Fraction, Fraction]] = {}
        models: dict[str, list[str]] = defaultdict(list)
        for entry in config["model_list"]:
            params, info = entry.get("litellm_params", {}), entry.get("model_info", {})

            def price(name: str, params: dict[str, str] = params, info: dict[str, str] = info) -> Fraction:
                return Fraction(params.get(name) or info.get(name) or "0")

            deployment[info["id"]] = (price("input_cost_per_token"), price("output_cost_per_token"))
            models[entry["model_name"]].append(info["id"])
        rules = yaml.load(policy.read_text(), Loader=yaml.BaseLoader)  # noqa: S506
        return cls(deployment, dict(models), {t: Fraction(v["markup"]) for t, v in rules["tiers"].items()},
                   {name: (Fraction(v["multiplier"]), tuple(v["models"])) for name, v in rules["power_levels"].items()},
                   {name: int(v["max_tokens"]) for name, v in rules["power_levels"].items()},
                   Fraction(rules.get("credits_per_usd", "1000")))

    def multiplier(self, level: str, model: str) -> Fraction:
        """The level's when it lists the model; else the highest among the levels listing it; else 1."""
        mult, listed = self.levels[level]
        if model in listed:
            return mult
        return max((m for m, names in self.levels.values() if model in names), default=Fraction(1))

    def price(self, model: str, deployment: str | None) -> tuple[Fraction, Fraction]:
        """The answering deployment's price; unknown (a sweeper's settlement): the highest of the model's."""
        if deployment in self.deployment:
            return self.deployment[deployment]
        prices = [self.deployment[d] for d in self.models[model]]
        return max(p[0] for p in prices), max(p[1] for p in prices)

    def charge(self, model: str, deployment: str | None, tier: str, level: str, prompt: int, completion: int) -> int:
        """`ceil(usd * credits_per_usd * 1000 * (1 + markup) * multiplier)`."""
        price_in, price_out = self.price(model, deployment)
        usd = prompt * price_in + completion * price_out
        return math.ceil(usd * self.credits_per_usd * 1000 * (1 + self.markup[tier]) * self.multiplier(level, model))


def provider_usage(answer: Answer, level_cap: dict[str, int]) -> tuple[int, int] | None:
    """What the fake provider reports for this request (devstack/fake_provider.py's rules), when known:
    prompt = words + 1 per message, completion = chunks capped by max_tokens (the level's cap when absent).
    None for LiteLLM's own mock model (LiteLLM counts it)."""
    spec = answer.spec
    if spec.model == "mock-gpt" or spec.route != "chat/completions":
        return None if spec.route != "embeddings" else (len(spec.prompt.split()), 0)
    cap = min(spec.max_tokens or level_cap[spec.level], level_cap[spec.level])
    return len(spec.prompt.split()) + 1, min(spec.chunks, cap)


# ------------------------------------------------------------------ the ledger, read once


@dataclass
class Ledger:
    usage: dict[tuple[str, str], asyncpg.Record]
    holds: dict[tuple[str, str], list[asyncpg.Record]]
    journal: dict[str, list[asyncpg.Record]]  # org -> entries by version
    grant_versions: dict[tuple[str, str], int]  # (org, idempotency key) -> journal version
    granted: dict[str, int]  # org -> grants + adjustments - forfeited
    overdue: int  # holds pending past expiry + one sweep interval, now
    max_sweep_lateness: float  # seconds, over holds the sweeper settled


async def read_ledger(dsn: str, orgs: set[str], sweep_seconds: float) -> Ledger:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await conn.execute("SET LOCAL search_path = creditgate")
            ids = sorted(orgs)
            usage = await conn.fetch("SELECT * FROM usage_records WHERE org_id = ANY($1)", ids)
            holds = await conn.fetch("SELECT * FROM holds WHERE org_id = ANY($1) ORDER BY id", ids)
            journal = await conn.fetch(
                "SELECT org_id, version, kind, d_granted, d_posted, d_pending, d_overage, user_id, request_id, "
                "grant_id, extract(epoch FROM created_at)::float8 AS t FROM journal WHERE org_id = ANY($1) "
                "ORDER BY org_id, version", ids)
            grants = await conn.fetch("SELECT id, org_id, idempotency_key, amount, coalesce(forfeited, 0) AS lost "
                                      "FROM grants WHERE org_id = ANY($1)", ids)
            overdue = await conn.fetchval(
                "SELECT count(*) FROM holds WHERE state = 'pending' AND org_id = ANY($1) "
                "AND expires_at + make_interval(secs => $2) < creditgate.now()", ids, sweep_seconds)
            lateness = await conn.fetchval(
                "SELECT coalesce(max(extract(epoch FROM resolved_at - expires_at)), 0)::float8 FROM holds "
                "WHERE state = 'expired' AND org_id = ANY($1)", ids)
    finally:
        await conn.close()
    by_hold: dict[tuple[str, str], list[asyncpg.Record]] = defaultdict(list)
    for h in holds:
        by_hold[(h["org_id"], h["request_id"])].append(h)
    entries: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for j in journal:
        entries[j["org_id"]].append(j)
    grant_id = {g["id"]: (g["org_id"], g["idempotency_key"]) for g in grants}
    versions = {grant_id[j["grant_id"]]: int(j["version"]) for j in journal
                if j["kind"] == "grant" and j["grant_id"] in grant_id}
    granted: dict[str, int] = defaultdict(int)
    for g in grants:
        granted[g["org_id"]] += int(g["amount"]) - int(g["lost"])
    return Ledger({(u["org_id"], u["request_id"]): u for u in usage}, dict(by_hold), dict(entries), versions,
                  dict(granted), int(overdue), float(lateness))


def verify(dsn: str) -> tuple[bool, str]:
    """`creditgate verify` as an operator runs it."""
    done = subprocess.run([sys.executable, "-m", "proxy.cli", "verify"], cwd=services.ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CREDITGATE_DATABASE_URL": dsn,
                                                       "PYTHONPATH": str(services.ROOT)})
    return done.returncode == 0, (done.stdout + done.stderr).strip()


# ------------------------------------------------------------------ false refusals


@dataclass
class Refusals:
    checked: int = 0
    false: list[str] = field(default_factory=list)  # request ids
    unknown_hold: list[str] = field(default_factory=list)  # a 402 whose hold could not be read
    hold_differs: list[str] = field(default_factory=list)  # a 402's hold unlike an admitted twin's
    raced: int = 0  # justified 402s whose window also held states that covered the hold (a race lost fairly)
    codes: Counter[str] = field(default_factory=Counter)


def false_refusals(answers: list[Answer], ledger: Ledger, population: Population, grants: list[Grant]) -> Refusals:
    """Each 402 checked against the states of its pool and allocation it could have seen.

    The reserve that refused read its pool (locked) and allocation at one moment between the request being sent
    and the 402 arriving; every balance change is one journal version of that org, and the allocation's change
    rides in the same version (its `user_id`). So the reserve saw the state after some version v with
    v_lo <= v <= v_hi:
    - v_lo, the newest version known to be committed before the request was sent: the hold of any request
      of that org whose answer had begun, the settlement of any non-stream answer that carried
      `X-Credits-Remaining` (settled before it was sent), any grant the driver had been answered for;
    - v_hi, the newest version whose transaction began (`created_at`) before the 402 arrived: a later one
      cannot have committed before the reserve read the pool.
    The refusal is justified when in at least one of those states the pool's available credit
    (granted - posted - pending - overage) or the allocation's (limit - posted - pending) was below the hold;
    else it is a false refusal: no order of events consistent with what was observed explains it. The hold is
    the one the 402 names; a 402 whose hold differs from what an admitted request of the same shape was held
    is reported too (a wrong hold would make a refusal look justified)."""
    out = Refusals()
    held_by_shape: dict[tuple[str, ...], set[int]] = defaultdict(set)
    known: dict[str, list[tuple[float, int]]] = defaultdict(list)  # org -> (time known committed, version)
    versions = _versions_by_request(ledger)
    for a in answers:
        org = a.spec.member.org_id
        if a.held is not None:
            held_by_shape[a.spec.shape].add(a.held)
        if a.t_head is not None and (org, a.rid, "hold") in versions:
            known[org].append((a.t_head, versions[(org, a.rid, "hold")]))
        if a.remaining is not None and (org, a.rid, "post") in versions:
            known[org].append((a.t_end, versions[(org, a.rid, "post")]))
    for g in [*population.grants, *grants]:
        if (g.org_id, g.key) in ledger.grant_versions:
            known[g.org_id].append((g.t_done, ledger.grant_versions[(g.org_id, g.key)]))
    floors: dict[str, tuple[list[float], list[int]]] = {}
    for org, pairs in known.items():
        pairs.sort()
        running, highest = [], 0
        for _, v in pairs:
            highest = max(highest, v)
            running.append(highest)
        floors[org] = ([t for t, _ in pairs], running)
    states = {org: _fold(entries) for org, entries in ledger.journal.items()}
    for a in answers:
        if a.status != 402:
            continue
        out.codes[a.code or "none"] += 1
        if a.code == "key_limit_exhausted":  # a key's own limit: not in the contract's definition, not modelled
            continue
        out.checked += 1
        org, user = a.spec.member.org_id, a.spec.member.user_id
        if a.refused_hold is None:
            out.unknown_hold.append(a.rid)
            continue
        twins = held_by_shape.get(a.spec.shape, set())
        if twins and twins != {a.refused_hold}:
            out.hold_differs.append(a.rid)
        times, running = floors.get(org, ([], []))
        k = bisect.bisect_left(times, a.t_send)
        v_lo = running[k - 1] if k else 0
        created, pool, used = states.get(org, ([0.0], [0], {}))
        v_hi = max((v for v, t in enumerate(created) if t <= a.t_end + CLOCK_SLACK), default=0)
        limit = population.limits.get((org, user))
        user_used = used.get(user, [0] * len(pool))
        short = [pool[v] < a.refused_hold or (limit is not None and limit - user_used[v] < a.refused_hold)
                 for v in range(v_lo, max(v_hi, v_lo) + 1)]
        if not any(short):
            out.false.append(a.rid)
        elif not all(short):
            out.raced += 1
    return out


def _versions_by_request(ledger: Ledger) -> dict[tuple[str, str, str], int]:
    found: dict[tuple[str, str, str], int] = {}
    for org, entries in ledger.journal.items():
        for j in entries:
            if j["request_id"] is not None and j["kind"] in ("hold", "post"):
                found[(org, j["request_id"], j["kind"])] = int(j["version"])
    return found


def _fold(entries: list[asyncpg.Record]) -> tuple[list[float], list[int], dict[str, list[int]]]:
    """Per version v (0 = before the first entry): when its transaction began, the pool's available credit
    after it, and each member's allocation use (posted + pending) after it."""
    created, pool = [0.0], [0]
    users = {j["user_id"] for j in entries if j["user_id"] is not None}
    used: dict[str, list[int]] = {u: [0] for u in users}
    for j in entries:
        created.append(float(j["t"]))
        pool.append(pool[-1] + int(j["d_granted"]) - int(j["d_posted"]) - int(j["d_pending"]) - int(j["d_overage"]))
        for u, series in used.items():
            delta = int(j["d_pending"]) + int(j["d_posted"]) + int(j["d_overage"]) if j["user_id"] == u else 0
            series.append(series[-1] + delta)
    return created, pool, used


# ------------------------------------------------------------------ the figures


@dataclass
class Figures:
    """What a run prints after each fault and at the end; `wrong()` names every figure that is not as the
    contract says."""

    answers: int
    by_status: Counter[int]
    verify_ok: bool
    verify_text: str
    overspend_pools: int
    overspend_allocations: int
    overage_requests: int
    overage_millicredits: int
    overage_ids: list[str]
    ok_checked: int
    ok_without_one_record: list[str]
    errors_charged: list[str]
    overdue_holds: int
    max_sweep_lateness: float
    refusals: Refusals
    sources: Counter[str]
    charges_checked: int
    charges_differing: list[str]
    usage_checked: int
    usage_differing: list[str]
    overspend_keys: int = 0  # charged beyond a key's own limit (issue 12)

    def wrong(self) -> list[str]:
        bad = []
        if not self.verify_ok:
            bad.append("verify")
        if self.overspend_pools or self.overspend_allocations or self.overspend_keys:
            bad.append("overspend")
        if self.overage_requests or self.overage_millicredits:
            bad.append("overage")
        if self.ok_without_one_record:
            bad.append("2xx without exactly one usage record")
        if self.errors_charged:
            bad.append("error answers charged")
        if self.overdue_holds:
            bad.append("holds pending past expiry + one sweep")
        if self.refusals.false or self.refusals.unknown_hold or self.refusals.hold_differs:
            bad.append("false refusals")
        if self.charges_differing:
            bad.append("charges differing from the formula")
        if self.usage_differing:
            bad.append("provider usage differing")
        return bad

    def lines(self) -> list[tuple[str, str]]:
        statuses = ", ".join(f"{s or 'none'}: {n}" for s, n in sorted(self.by_status.items()))
        r = self.refusals
        sources = ", ".join(f"{k} {self.sources[k]}" for k in ("provider", "estimate", "checkpoint", "prompt_only"))
        return [
            ("answers", f"{self.answers} ({statuses})"),
            ("creditgate verify", "clean" if self.verify_ok else "FAILED: " + self.verify_text.replace("\n", " | ")),
            ("overspend (pools / allocations / keys)",
             f"{self.overspend_pools} / {self.overspend_allocations} / {self.overspend_keys} millicredits"),
            ("overage", f"{self.overage_millicredits} millicredits in {self.overage_requests} requests"
             + _some(self.overage_ids)),
            ("2xx without exactly one usage record", f"{len(self.ok_without_one_record)} of {self.ok_checked}"
             + _some(self.ok_without_one_record)),
            ("error answers charged", f"{len(self.errors_charged)}" + _some(self.errors_charged)),
            ("holds pending past expiry + one sweep", f"{self.overdue_holds} (latest sweep "
             f"{self.max_sweep_lateness:.1f} s after expiry)"),
            ("false refusals", f"{len(r.false)} of {r.checked} 402s (hold unreadable {len(r.unknown_hold)}, "
             f"hold unlike its admitted twin {len(r.hold_differs)}; {r.raced} lost a race for the last credit; "
             + ", ".join(f"{k} {n}" for k, n in sorted(r.codes.items())) + ")" + _some(r.false + r.hold_differs)),
            ("charges differing from the formula", f"{len(self.charges_differing)} of {self.charges_checked}"
             + _some(self.charges_differing)),
            ("provider usage differing", f"{len(self.usage_differing)} of {self.usage_checked}"
             + _some(self.usage_differing)),
            ("settlements by usage source", sources),
        ]


def _some(ids: list[str]) -> str:
    return f" e.g. {', '.join(ids[:5])}" if ids else ""


def figures(answers: list[Answer], ledger: Ledger, population: Population, grants: list[Grant], prices: Prices,
            *, verified: tuple[bool, str], settled_before: float) -> Figures:
    """The figures over `answers`; the per-answer ones only over answers that ended before `settled_before`
    (every settlement path has had its time)."""
    spent: dict[str, int] = defaultdict(int)
    spent_by_member: dict[tuple[str, str], int] = defaultdict(int)
    spent_by_key: dict[str, int] = defaultdict(int)
    overage_requests = overage_total = 0
    overage_ids: list[str] = []
    for (org, rid), u in ledger.usage.items():
        spent[org] += int(u["charged"])
        spent_by_member[(org, u["user_id"])] += int(u["charged"])
        spent_by_key[u["key_id"]] += int(u["charged"])
        hold = next((h for h in ledger.holds.get((org, rid), []) if h["id"] == u["hold_id"]), None)
        excess = max(int(u["charged"]) - (int(hold["amount"]) if hold else 0), int(u["overage"]))
        if excess > 0:
            overage_requests += 1
            overage_total += excess
            overage_ids.append(f"{rid} ({u['usage_source']}: {u['prompt_tokens']}+{u['completion_tokens']} tokens "
                               f"charged {u['charged']}, held {hold['amount'] if hold else None})")
    over_pools = sum(max(0, spent[o] - ledger.granted.get(o, 0)) for o in spent)
    over_alloc = sum(max(0, n - limit) for key, n in spent_by_member.items()
                     if (limit := population.limits.get(key)) is not None)
    over_keys = sum(max(0, spent_by_key[key_id] - limit) for key_id, limit in population.key_limits.items())
    settled = [a for a in answers if a.t_end < settled_before]
    ok_missing, errors_charged, differing, usage_differing = [], [], [], []
    charges_checked = usage_checked = 0
    for a in settled:
        u = ledger.usage.get((a.spec.member.org_id, a.rid))
        if a.ok and u is None:
            ok_missing.append(a.rid)
        if a.status >= 400 and u is not None and int(u["charged"]) > 0:
            errors_charged.append(f"{a.rid} ({a.status} {a.code} during '{a.fault}', replica {a.replica}: "
                                  f"{u['usage_source']} charged {u['charged']})")
    for a in answers:
        u = ledger.usage.get((a.spec.member.org_id, a.rid))
        if u is None:
            continue
        charges_checked += 1
        expected = 0 if u["byok"] else prices.charge(
            u["model"], u["deployment"], a.spec.member.tier, a.spec.level, int(u["prompt_tokens"]),
            int(u["completion_tokens"]))
        if int(u["charged"]) != expected:
            differing.append(f"{a.rid}:{u['charged']}!={expected}")
        reported = provider_usage(a, prices.caps)
        if u["usage_source"] == "provider" and reported is not None and not a.spec.controls:
            usage_checked += 1
            if (int(u["prompt_tokens"]), int(u["completion_tokens"])) != reported:
                usage_differing.append(f"{a.rid}:{u['prompt_tokens']}/{u['completion_tokens']}!={reported}")
    verify_ok, verify_text = verified
    return Figures(
        len(answers), Counter(a.status for a in answers), verify_ok, verify_text, over_pools, over_alloc,
        overage_requests, overage_total, overage_ids, sum(1 for a in settled if a.ok), ok_missing, errors_charged,
        ledger.overdue, ledger.max_sweep_lateness, false_refusals(answers, ledger, population, grants),
        Counter(str(u["usage_source"]) for u in ledger.usage.values()), charges_checked, differing,
        usage_checked, usage_differing, over_keys)


def print_figures(title: str, f: Figures) -> None:
    print(f"\n== {title} ==", flush=True)
    width = max(len(name) for name, _ in f.lines())
    for name, value in f.lines():
        print(f"  {name:<{width}}  {value}", flush=True)
    wrong = f.wrong()
    print(f"  -> {'WRONG: ' + ', '.join(wrong) if wrong else 'all as the contract says'}", flush=True)
