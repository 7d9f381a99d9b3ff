"""A bounded, seeded mixed load through the real stack, recording every answer (`make chaos`,
`make bench-correctness`).

The population (`seed_population`): orgs at every paid tier; a rich org; an org whose members' allocations
run dry; an org whose pool runs dry and is topped up now and then by small grants (so its availability moves
while requests race for it); an org with a member's own provider key (BYOK). The requests (`Plan`): chat
streams and not, embeddings, streams the client leaves, long streams, every power level, `auto` and named
models (some named at another level, so the multiplier rule is exercised), output caps or none. Everything is
drawn from one `random.Random(seed)` in order, so a seed replays the same requests (their timing, and what the
faults cut, vary with the machine).

Each answer is recorded (`Answer`) with its request id, status, error code, the credit headers, the hold a 402
names, and the wall-clock times it was sent and answered: what bench.audit checks against the ledger.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from devstack.admin_client import AdminClient

PROMPTS = ("hello there", "summarise the quarterly numbers in three lines",
           "write a haiku about a billing gateway that never loses a millicredit",
           "translate good morning into French and German", "count to ten slowly please")
LEVELS = {"eco": ("fake-small", "mock-gpt"), "balanced": ("fake-medium", "fake-gpt-4o-mini", "fake-multi"),
          "precision": ("fake-large", "byok-gpt")}
MAX_TOKENS = (None, 16, 64, 256)
HELD_IN_402 = re.compile(r"\((\d+) millicredits held\)")


@dataclass(frozen=True, slots=True)
class Member:
    label: str
    org_id: str
    user_id: str
    key: str
    tier: str
    limit: int | None  # allocation (period none), millicredits
    byok: bool  # stores its own openai key


@dataclass(frozen=True, slots=True)
class Grant:
    org_id: str
    key: str  # idempotency key: finds the journal entry
    amount: int
    t_done: float  # wall clock when the admin API answered (committed before)


@dataclass
class Population:
    members: list[Member]
    grants: list[Grant]
    tiers: dict[str, str]  # org -> tier
    limits: dict[tuple[str, str], int | None]  # (org, user) -> allocation
    dry_org: str
    run: str  # names this run's request ids: cg-<run>-<n>
    key_limits: dict[str, int] = field(default_factory=dict)  # key id -> its own spend limit (period none)


@dataclass(frozen=True, slots=True)
class Spec:
    """One request, drawn from the seed."""

    n: int
    member: Member
    route: str  # "chat/completions" | "embeddings"
    stream: bool
    model: str
    level: str
    prompt: str
    max_tokens: int | None
    chunks: int
    delay_ms: int
    include_usage: bool
    leave_after: int | None  # the client closes the stream after this many events
    controls: dict[str, Any]  # provider faults (fake_*)

    @property
    def shape(self) -> tuple[str, ...]:
        """What the hold depends on: two requests of one shape are held the same amount."""
        return (self.member.org_id, self.member.user_id, self.route, self.model, self.level, self.prompt,
                str(self.max_tokens))


@dataclass
class Answer:
    rid: str
    spec: Spec
    replica: int
    fault: str  # what the fault driver was doing when it was sent
    t_send: float
    t_head: float | None = None
    t_end: float = 0.0
    status: int = 0  # 0: no HTTP answer (connection refused or cut before the headers)
    code: str | None = None
    held: int | None = None
    charged: int | None = None
    remaining: int | None = None
    refused_hold: int | None = None  # a 402's hold, from its message
    done: bool = False  # a stream ended with [DONE]
    error_event: bool = False  # a stream ended with the final error event
    cut: bool = False  # the connection broke after the headers

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def seed_population(admin: AdminClient, run: str) -> Population:
    """The orgs and members of one run (module doc); admin calls go through replica 0."""
    members: list[Member] = []
    grants: list[Grant] = []
    tiers: dict[str, str] = {}
    limits: dict[tuple[str, str], int | None] = {}
    key_limits: dict[str, int] = {}

    def org(name: str, tier: str, credit: int) -> str:
        org_id = admin.org(f"{name} {run}", tier)
        tiers[org_id] = tier
        key = f"{run}-seed-{name}"
        admin.grant(org_id, credit, reason="chaos seed", key=key)
        grants.append(Grant(org_id, key, credit, time.time()))
        return org_id

    def member(label: str, org_id: str, limit: int | None = None, byok: bool = False,
               key_limit: int | None = None) -> None:
        user = admin.user(f"{label}-{run}@example.com", label)
        admin.member(org_id, user, allocation_millicredits=limit, allocation_period="none")
        if key_limit is None:
            _, key = admin.key(user, org_id)
        else:  # a scoped key whose own limit runs dry before the pool (issue 12's third bound)
            key_id, key = admin.key(user, org_id, limit_millicredits=key_limit)
            key_limits[key_id] = key_limit
        limits[(org_id, user)] = limit
        members.append(Member(label, org_id, user, key, tiers[org_id], limit, byok))

    rich = org("rich", "starter", 1_000_000_000)
    for i in range(3):
        member(f"rich{i}", rich)
    member("keyed", rich, key_limit=6_000)
    allocated = org("allocated", "professional", 1_000_000_000)
    member("alloc-small", allocated, limit=8_000)
    member("alloc-large", allocated, limit=30_000)
    member("alloc-none", allocated)
    dry = org("dry", "enterprise", 30_000)
    member("dry0", dry)
    member("dry1", dry)
    own = org("own-keys", "starter", 1_000_000_000)
    member("byok", own, byok=True)
    member("platform", own)
    return Population(members, grants, tiers, limits, dry, run, key_limits)


def store_byok_keys(url: str, population: Population) -> None:
    for m in population.members:
        if m.byok:
            answer = httpx.post(f"{url}/v1/byok/keys", headers={"authorization": f"Bearer {m.key}"}, timeout=30,
                                json={"provider": "openai", "api_key": "sk-own-" + secrets.token_hex(8)})
            if answer.status_code not in (200, 201):
                raise RuntimeError(f"storing a BYOK key failed: {answer.status_code} {answer.text}")


FAULT_CONTROLS: dict[str, Callable[[random.Random, bool], dict[str, Any]]] = {
    "none": lambda rng, stream: {},
    # stalls past the gateway's upstream timeout (2 s) are 504s, shorter ones only slow
    "slow": lambda rng, stream: {"fake_stall_ms": rng.choice((200, 600, 2600))},
    "failing": lambda rng, stream: rng.choice(({"fake_status": 500}, {"fake_status": 503},
                                               {"fake_error_after": rng.randint(1, 20)} if stream else
                                               {"fake_status": 502}, {})),
    "dropping": lambda rng, stream: rng.choice(({"fake_fail_after": rng.randint(0, 3)},
                                                {"fake_end_after": 2} if stream else {"fake_fail_after": 0}, {})),
}


class Plan:
    """Draws the run's requests from its seed, in order."""

    def __init__(self, seed: int, population: Population, mixed_faults: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.population = population
        self.mixed_faults = mixed_faults  # outside fault phases, the share of requests the provider fails
        self.count = 0

    def next(self, fault: str) -> Spec:
        rng = self.rng
        self.count += 1
        member = rng.choice(self.population.members)
        kind = rng.choices(("answer", "stream", "long", "leave", "embed"), (36, 36, 8, 10, 10))[0]
        level = rng.choice(tuple(LEVELS))
        if kind == "embed":
            return Spec(self.count, member, "embeddings", False, "fake-embed", level, rng.choice(PROMPTS), None, 0, 0,
                        False, None, {})
        models = ["auto", *LEVELS[level]]
        if member.byok and level == "precision":
            models.append("byok-only")
        model = rng.choice(models)
        if rng.random() < 0.1:  # a model named at another level: charged at the highest level listing it
            model = rng.choice(LEVELS[rng.choice(tuple(LEVELS))])
        if member.label.startswith(("alloc", "dry")) and rng.random() < 0.5:
            level, model = "precision", "fake-large"  # the expensive holds that make them run dry
        stream = kind != "answer"
        chunks = rng.randint(60, 120) if kind == "long" else rng.randint(1, 24)
        delay = rng.randint(20, 40) if kind == "long" else rng.choice((0, 5, 15))
        # a fixed number of draws per request whatever the phase, so the sequence does not depend on timing
        mixed, mixed_kind, own = rng.random(), rng.choice(("slow", "failing", "dropping")), random.Random(rng.random())
        if fault == "none" and mixed < self.mixed_faults:
            fault = mixed_kind
        controls = FAULT_CONTROLS[fault](own, stream)
        return Spec(self.count, member, "chat/completions", stream, model, level, rng.choice(PROMPTS),
                    rng.choice(MAX_TOKENS), chunks, delay, rng.random() < 0.5,
                    rng.randint(1, 4) if kind == "leave" else None, controls)


def body_of(spec: Spec, rid: str) -> dict[str, Any]:
    if spec.route == "embeddings":
        return {"model": spec.model, "input": spec.prompt}
    body: dict[str, Any] = {"model": spec.model, "messages": [{"role": "user", "content": spec.prompt}],
                            "fake_chunks": spec.chunks, "fake_delay_ms": spec.delay_ms, "fake_tag": rid,
                            **spec.controls}
    if spec.max_tokens is not None:
        body["max_tokens"] = spec.max_tokens
    if spec.stream:
        body["stream"] = True
        if spec.include_usage:
            body["stream_options"] = {"include_usage": True}
    return body


def _int(headers: httpx.Headers, name: str) -> int | None:
    value = headers.get(name)
    return int(value) if value is not None and value.isdigit() else None


def _read_head(answer: Answer, resp: httpx.Response) -> None:
    answer.t_head = time.time()
    answer.status = resp.status_code
    answer.held = _int(resp.headers, "x-credits-held")
    answer.charged = _int(resp.headers, "x-credits-charged")
    answer.remaining = _int(resp.headers, "x-credits-remaining")


def _read_error(answer: Answer, raw: bytes) -> None:
    try:
        error = httpx.Response(200, content=raw).json().get("error") or {}
    except ValueError:
        return
    answer.code = error.get("code")
    if answer.status == 402:
        found = HELD_IN_402.search(str(error.get("message", "")))
        answer.refused_hold = int(found.group(1)) if found else None


async def send(client: httpx.AsyncClient, url: str, spec: Spec, rid: str, replica: int, fault: str) -> Answer:
    """One request; never raises for what the network or the gateway does (that is what is recorded)."""
    headers = {"authorization": f"Bearer {spec.member.key}", "x-request-id": rid, "x-power-level": spec.level}
    answer = Answer(rid, spec, replica, fault, time.time())
    try:
        async with client.stream("POST", f"{url}/v1/{spec.route}", json=body_of(spec, rid), headers=headers) as resp:
            _read_head(answer, resp)
            raw = b""
            events = 0
            async for chunk in resp.aiter_raw():
                raw += chunk
                events = raw.count(b"data: ")
                if spec.leave_after is not None and resp.status_code == 200 and events >= spec.leave_after:
                    break  # the client leaves: the context closes the connection
            if resp.status_code >= 400:
                _read_error(answer, raw)
            answer.done = raw.rstrip().endswith(b"data: [DONE]")
            answer.error_event = b'data: {"error"' in raw
    except httpx.HTTPError:
        answer.cut = answer.t_head is not None
    answer.t_end = time.time()
    return answer


@dataclass
class Load:
    """The load, run in its own thread with its own event loop while the main thread causes the faults.

    `routable` are the replica indexes a load balancer would send new requests to (the fault driver takes a
    replica out before a SIGTERM, as readiness would, but not before a SIGKILL); `fault` is the provider fault
    phase. Bounded by `max_requests` and by `stop()`.
    """

    urls: Sequence[str]
    plan: Plan
    concurrency: int
    max_requests: int
    routable: list[int] = field(default_factory=list)
    fault: str = "none"
    phase: str = "start"  # what the fault driver is doing (recorded on each answer)
    answers: list[Answer] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)
    admin_token: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.routable:
            self.routable = list(range(len(self.urls)))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 120.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def finished(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def ended_before(self, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.t_end < t]

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency * 2, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=5), limits=limits) as client:
            await asyncio.gather(*(self._worker(client) for _ in range(self.concurrency)))

    async def _worker(self, client: httpx.AsyncClient) -> None:
        run = self.plan.population.run
        while not self._stop.is_set() and self.plan.count < self.max_requests:
            spec = self.plan.next(self.fault)
            routable = list(self.routable) or list(range(len(self.urls)))
            replica = routable[spec.n % len(routable)]
            answer = await send(client, self.urls[replica], spec, f"cg-{run}-{spec.n}", replica,
                                f"{self.phase}, provider {self.fault}")
            self.answers.append(answer)
            if answer.status == 402 and spec.member.org_id == self.plan.population.dry_org and spec.n % 4 == 0:
                await self._top_up(client, spec.member.org_id, spec.n)
            if answer.status == 0 or answer.status in (502, 503):
                await asyncio.sleep(0.2)  # a replica, the database or LiteLLM is down: do not spin

    async def _top_up(self, client: httpx.AsyncClient, org_id: str, n: int) -> None:
        """A small grant to the dry org, so its availability moves while its requests race (seeded amount)."""
        key = f"top-up-{org_id}-{n}"
        amount = 2_000 + (n * 7919) % 6_000
        body = {"amount_millicredits": amount, "reason": "chaos top-up", "idempotency_key": key}
        url = self.urls[self.routable[0] if self.routable else 0]
        try:
            answer = await client.post(f"{url}/admin/orgs/{org_id}/grants", json=body,
                                       headers={"authorization": f"Bearer {self.admin_token}"})
        except httpx.HTTPError:
            return
        if answer.status_code in (200, 201):
            self.grants.append(Grant(org_id, key, amount, time.time()))
