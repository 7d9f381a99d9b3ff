"""Two orgs in one real gateway: the admin and caller routes mounted in `create_app` over the real
PgLedger and PgDirectory, with the real Authenticate and ResolveOrg in front of the caller routes.

The world is seeded once into a template database (`seed`); each test that changes it works on its
own copy (CREATE DATABASE ... TEMPLATE), so every cell of the lanes matrix starts from the same rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from cryptography.fernet import Fernet
from starlette.routing import BaseRoute

from devstack import services
from policies.auth import Authenticate
from policies.org import ResolveOrg
from proxy.admin.routes import admin_routes
from proxy.app import create_app
from proxy.caller.common import identify_with
from proxy.caller.routes import caller_routes
from proxy.config.catalogue import load_catalogue
from proxy.config.live import LiveConfig, Snapshot
from proxy.config.policy import load_policy
from proxy.config.settings import Secret, Settings
from proxy.db.migrate import migrate
from proxy.directory.crypto import KeyBox, last4
from proxy.directory.pg import PgDirectory
from proxy.export.alerts import PgAlerts
from proxy.export.outbox import PgOutbox
from proxy.ledger.pg import PgLedger
from proxy.ledger.types import HoldRequest, Settlement
from tests.fakes import DirectoryKeys

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "operator-token-" + "w" * 24
A, B = "org_lane_a", "org_lane_b"
MEMBER_A, ADMIN_A, TARGET_A = "usr_member_a", "usr_admin_a", "usr_target_a"
ADMIN_B, TARGET_B, LONER = "usr_admin_b", "usr_target_b", "usr_loner"
GRANTED = 1_000_000
ORG_BYOK_KEY = "sk-org-a-provider-key-4242"
KEYBOX = KeyBox([Secret(Fernet.generate_key().decode())])
# the shipped configuration's prices: the seeded requests were held and charged at them
PRICES = Snapshot.of(load_policy(ROOT / "policy.yaml"), load_catalogue(ROOT / "litellm_config.yaml"))

# who calls: their Authorization header (None: no header at all)
KEYS = {
    "member_a": "sk-cg-member-a-" + "m" * 34,
    "admin_a": "sk-cg-admin-a-" + "a" * 35,
    "admin_b": "sk-cg-admin-b-" + "b" * 35,
    "target_a": "sk-cg-target-a-" + "t" * 34,
    "target_b": "sk-cg-target-b-" + "u" * 34,
}
CALLERS = ("member_a", "admin_a", "admin_b", "operator", "stranger", "nobody")
CREDENTIALS: dict[str, str | None] = {
    "member_a": KEYS["member_a"], "admin_a": KEYS["admin_a"], "admin_b": KEYS["admin_b"], "operator": TOKEN,
    "stranger": "sk-cg-stranger-" + "s" * 34, "nobody": None,
}
ACTORS = {"member_a": MEMBER_A, "admin_a": ADMIN_A, "admin_b": ADMIN_B, "operator": "operator"}
KEY_IDS = {"member_a": "key_member_a", "admin_a": "key_admin_a", "admin_b": "key_admin_b",
           "target_a": "key_target_a", "target_b": "key_target_b"}
KEY_OWNERS = {"member_a": (MEMBER_A, A), "admin_a": (ADMIN_A, A), "admin_b": (ADMIN_B, B),
              "target_a": (TARGET_A, A), "target_b": (TARGET_B, B)}


def headers(caller: str) -> dict[str, str]:
    credential = CREDENTIALS[caller]
    return {} if credential is None else {"authorization": f"Bearer {credential}"}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hold(org: str, user: str, request_id: str, amount: int) -> HoldRequest:
    rate = Decimal("0.5")
    return HoldRequest(org_id=org, user_id=user, key_id="key_x", request_id=request_id, amount=amount,
                       model="fake-small", byok=False, prompt_tokens=10, input_rate=rate, output_rate=rate,
                       list_input_rate=rate, list_output_rate=rate, price_version=PRICES.version)


def spent(charge: int) -> Settlement:
    return Settlement(prompt_tokens=10, completion_tokens=4, charge=charge, list_price=charge * 2,
                      usage_source="provider", model="fake-small", provider="openai", deployment="fake-small-1")


async def seed(dsn: str) -> None:
    """A: member_a, admin_a (admin), target_a (default A); B: admin_b (admin), target_b (default B);
    loner belongs nowhere. Every one of them but loner has a key bound to their org; A has an org
    BYOK key; each org has GRANTED credit and one settled request (req-a1 by member_a, req-b1 by
    target_b)."""
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany("INSERT INTO creditgate.orgs (id, name, tier) VALUES ($1, $2, 'starter')",
                               [(A, "Org A"), (B, "Org B")])
        users = [MEMBER_A, ADMIN_A, TARGET_A, ADMIN_B, TARGET_B, LONER]
        await conn.executemany("INSERT INTO creditgate.users (id, email) VALUES ($1, $1 || '@lanes.test')",
                               [(u,) for u in users])
        await conn.executemany(
            "INSERT INTO creditgate.memberships (org_id, user_id, role, is_default) VALUES ($1, $2, $3, $4)",
            [(A, MEMBER_A, "member", False), (A, ADMIN_A, "admin", False), (A, TARGET_A, "member", True),
             (B, ADMIN_B, "admin", False), (B, TARGET_B, "member", True)])
        await conn.executemany(
            """INSERT INTO creditgate.api_keys (id, user_id, org_id, name, key_hash, key_prefix)
               VALUES ($1, $2, $3, 'seed', $4, $5)""",
            [(KEY_IDS[who], user, org, sha256(KEYS[who]), KEYS[who][:10]) for who, (user, org) in KEY_OWNERS.items()])
        await conn.execute(
            """INSERT INTO creditgate.provider_keys (org_id, scope, owner_id, provider, ciphertext, last4)
               VALUES ($1, 'org', $1, 'openai', $2, $3)""",
            A, KEYBOX.encrypt(Secret(ORG_BYOK_KEY)), last4(Secret(ORG_BYOK_KEY)))
    finally:
        await conn.close()
    ledger = await PgLedger.connect(dsn, hold_ttl_seconds=120)
    try:
        await ledger.record_price_version(PRICES.version, PRICES.prices)
        for org, user, rid in ((A, MEMBER_A, "req-a1"), (B, TARGET_B, "req-b1")):
            await ledger.grant(org, GRANTED, "seed", "seed-grant", None, "operator")
            await ledger.reserve(hold(org, user, rid, 900))
            await ledger.settle(org, rid, spent(700))
    finally:
        await ledger.close()


@dataclass
class Probe:
    calls: list[str] = field(default_factory=list)

    async def __call__(self, model: str, key: Secret) -> tuple[int, str]:
        self.calls.append(model)
        return 200, "The provider accepted the key."


@dataclass
class World:
    http: httpx.AsyncClient
    pool: asyncpg.Pool
    directory: PgDirectory
    ledger: PgLedger
    revoked: list[str]
    routes: list[BaseRoute]

    async def call(self, caller: str, method: str, path: str, body: Any = None,
                   extra: dict[str, str] | None = None) -> httpx.Response:
        return await self.http.request(method, path, json=body, headers={**headers(caller), **(extra or {})})

    async def audit(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch("SELECT id, actor, action, org_id, target FROM creditgate.admin_audit ORDER BY id")
        return [dict(r) for r in rows]

    async def membership(self, org: str, user: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            """SELECT role, is_default, suspended, suspended_by, allocation_millicredits
                 FROM creditgate.memberships WHERE org_id = $1 AND user_id = $2""", org, user)
        return None if row is None else dict(row)


# every row of the world, table by table; `outside` leaves out one org's rows (what its admin may change)
_TABLES = {
    "orgs": ("SELECT * FROM creditgate.orgs ORDER BY id", "id"),
    "users": ("SELECT * FROM creditgate.users ORDER BY id", None),
    "memberships": ("SELECT * FROM creditgate.memberships ORDER BY org_id, user_id", "org_id"),
    "api_keys": ("SELECT * FROM creditgate.api_keys ORDER BY id", "org_id"),
    "provider_keys": ("SELECT * FROM creditgate.provider_keys ORDER BY org_id, scope, owner_id, provider", "org_id"),
    "pools": ("SELECT * FROM creditgate.pools ORDER BY org_id", "org_id"),
    "grants": ("SELECT * FROM creditgate.grants ORDER BY id", "org_id"),
    "journal": ("SELECT * FROM creditgate.journal ORDER BY id", "org_id"),
    "admin_audit": ("SELECT * FROM creditgate.admin_audit ORDER BY id", "org_id"),
    "budget_thresholds": ("SELECT * FROM creditgate.budget_thresholds ORDER BY org_id", "org_id"),
    "export_outbox": ("SELECT * FROM creditgate.export_outbox ORDER BY id", "org_id"),
}


async def snapshot(pool: asyncpg.Pool, outside: str | None = None) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for table, (query, org_column) in _TABLES.items():
        rows = [dict(r) for r in await pool.fetch(query)]
        if outside is not None and org_column is not None:
            rows = [r for r in rows if r[org_column] != outside]
        out[table] = rows
    return out


DEAD_LETTER = 424242  # the id of the dead letter `seed_export_rows` plants


async def seed_export_rows(pool: asyncpg.Pool) -> None:
    """A budget alert of A and a dead-lettered export event of A, so the export routes answer with rows
    (tests/export/ fires and dead-letters them for real)."""
    await pool.execute(
        """INSERT INTO creditgate.budget_alerts (org_id, scope, user_id, threshold, period_start, used, budget,
                                                 fired_at)
           VALUES ($1, 'allocation', $2, 80, 'epoch', 820, 1000, now())""", A, TARGET_A)
    await pool.execute(
        """INSERT INTO creditgate.export_outbox (org_id, id, code, transaction_id, occurred_at, properties, attempts,
                                                 next_attempt_at, last_status, last_error, dead_at, created_at)
           OVERRIDING SYSTEM VALUE
           VALUES ($1, $2, 'llm_usage', 'req-a1', now(), '{"charged_millicredits": 700}', 1, now(), 400,
                   'HTTP 400', now(), now())""", A, DEAD_LETTER)


def settings() -> Settings:
    return Settings(
        database_url=Secret("postgresql://unused@127.0.0.1:1/unused"), redis_url=Secret("redis://127.0.0.1:1/0"),
        upstream_url=f"http://127.0.0.1:{services.free_port()}", upstream_key=Secret("sk-upstream-unused"),
        admin_token=Secret(TOKEN), byok_keys=(), litellm_config=ROOT / "litellm_config.yaml",
        policy_config=ROOT / "policy.yaml",
    )


@asynccontextmanager
async def open_world(dsn: str) -> AsyncIterator[World]:
    """The real app (create_app: its error rendering, request ids, 404s) with the caller and admin
    routes over this database. App exceptions become responses, so a 500 is seen as one."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    assert pool is not None
    ledger = PgLedger(pool, hold_ttl_seconds=120)
    directory = PgDirectory(pool)
    policy, catalogue = load_policy(ROOT / "policy.yaml"), load_catalogue(ROOT / "litellm_config.yaml")
    revoked: list[str] = []

    async def on_revoke(key_hash: str) -> None:
        revoked.append(key_hash)

    identify = identify_with((Authenticate(DirectoryKeys(directory)), ResolveOrg(directory)))
    routes = [
        *caller_routes(identify=identify, ledger=ledger, directory=directory,
                       config=LiveConfig(Snapshot.of(policy, catalogue)), keybox=KEYBOX, probe=Probe(), created=0),
        *admin_routes(directory, ledger, admin_token=Secret(TOKEN), lookup_key=directory.api_key,
                      on_revoke=on_revoke, tiers=[t.name for t in policy.tiers],
                      power_levels=[lv.name for lv in policy.power_levels], dead_letters=PgOutbox(pool),
                      alerts=PgAlerts(pool)),
    ]
    app = create_app(settings(), policies=(), routes=routes)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as http:
            yield World(http, pool, directory, ledger, revoked, routes)
    finally:
        await ledger.close()
