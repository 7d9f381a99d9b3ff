"""The gateway runs with a database role that has no DDL rights, through the real stack: the owner runs
`creditgate migrate --grant`, then two `creditgate serve` replicas connect as the runtime role (no CREATE
anywhere, no temporary tables) and serve billed requests, streams, the admin API, readiness, the gauges
and the sweeper (a replica killed mid-stream is settled from its checkpoint by the other, an expiring
grant is forfeited); `creditgate verify` passes as that role; the role itself cannot create a table."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from devstack import services
from tests.e2e.conftest import Gateway, Member, make_member, start_gateway, stream_then_kill, write_policy

CLI = [str(Path(sys.executable).parent / "creditgate")]


@dataclass
class Database:
    owner_dsn: str
    app_role: str
    app_dsn: str


def cli(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITGATE_")}
    return subprocess.run([*CLI, *args], env={**env, "CREDITGATE_DATABASE_URL": dsn}, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def database(pg: services.Service) -> Iterator[Database]:
    """A database owned by a role that may run DDL (it migrates) and a bare LOGIN role for the runtime;
    TEMPORARY is taken from PUBLIC, so nothing may lean on temporary tables."""
    tag = secrets.token_hex(3)
    owner, app, name = f"cg_owner_{tag}", f"cg_app_{tag}", f"deploy_role_{tag}"

    async def admin(*statements: str) -> None:
        conn = await asyncpg.connect(pg.url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE ROLE {owner} LOGIN", f"CREATE ROLE {app} LOGIN", f"CREATE DATABASE {name} OWNER {owner}",
                      f"REVOKE TEMPORARY ON DATABASE {name} FROM PUBLIC"))
    base = pg.url.rsplit("/", 1)[0].replace("postgresql://postgres@", "postgresql://{}@")
    yield Database(base.format(owner) + f"/{name}", app, base.format(app) + f"/{name}")
    asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"DROP ROLE IF EXISTS {app}",
                      f"DROP ROLE IF EXISTS {owner}"))


def wait_settled(member: Member, request_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = member.get(f"/v1/requests/{request_id}").json()
        if body.get("status") != "pending" or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


async def cannot(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    finally:
        await conn.close()


def test_the_gateway_bills_administers_and_sweeps_as_a_role_without_ddl(
        database: Database, pg: services.Service, redis_server: services.Service, litellm: services.Service,
        fake_provider: services.Service, tmp_path: Path) -> None:
    migrated = cli("migrate", "--grant", database.app_role, dsn=database.owner_dsn)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.splitlines()[-1] == (f"granted {database.app_role} the runtime privileges (rows, "
                                                "sequences, functions; no DDL)")
    for statement in ("CREATE TABLE creditgate.x (i int)", "CREATE TABLE public.x (i int)",
                      "CREATE TEMP TABLE x (i int)", "CREATE SCHEMA x"):
        asyncio.run(cannot(database.app_dsn, statement))

    policy = write_policy(tmp_path, hold_ttl_seconds=3, sweep_interval_seconds=1)
    doomed = start_gateway(pg, redis_server, litellm, fake_provider, name="unused", policy=policy,
                           database_url=database.app_dsn)
    survivor: Gateway | None = None
    try:
        member = make_member(doomed, tier="starter", credit=10_000_000)
        assert doomed.admin.get(f"/admin/orgs/{member.org_id}")["id"] == member.org_id
        with member.http() as http:
            assert http.get("/readyz").status_code == 200
            plain = http.post("/v1/chat/completions", headers={"X-Request-Id": "role-plain"},
                              json={"model": "fake-small", "messages": [{"role": "user", "content": "hi"}]})
            assert plain.status_code == 200, plain.text
            assert int(plain.headers["x-credits-charged"]) > 0
            with http.stream("POST", "/v1/chat/completions", headers={"X-Request-Id": "role-stream"},
                             json={"model": "fake-small", "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]}) as stream:
                assert stream.status_code == 200 and b"data: [DONE]" in b"".join(stream.iter_bytes())
        assert wait_settled(member, "role-stream", 5)["usage_source"] == "provider"
        soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
        doomed.admin.grant(member.org_id, 1000, reason="expires", expires_at=soon)

        stream_then_kill(member, doomed, "fake-small", "role-crash")
        survivor = start_gateway(pg, redis_server, litellm, fake_provider, name="unused",
                                 database_url=database.app_dsn, env=doomed.env)
        member.gateway = survivor
        crashed = wait_settled(member, "role-crash", 3 + 2 + 10)
        assert (crashed["status"], crashed["usage_source"]) == ("settled", "checkpoint")
        # the sweeper also forfeited the expired grant: 10,000,000 granted stays, the 1,000 went
        deadline = time.monotonic() + 10
        while not any(entry["kind"] == "grant_expiry"
                      for entry in survivor.admin.get(f"/admin/orgs/{member.org_id}/ledger")["data"]):
            assert time.monotonic() < deadline, "the expiring grant was not forfeited"
            time.sleep(0.2)
        metrics = httpx.get(f"{survivor.url}/metrics", timeout=10).text
        assert 'creditgate_dependency_up{dependency="postgres"} 1.0' in metrics
        survivor.admin.revoke(member.key_id)
        verified = cli("verify", dsn=database.app_dsn)
        assert (verified.returncode, verified.stdout.strip()) == (0, "verify: all ledger invariants hold")
        for gateway in (doomed, survivor):
            log = gateway.svc.log.read_text(errors="replace")
            assert "permission denied" not in log and "InsufficientPrivilege" not in log
    finally:
        for replica in (doomed, survivor):
            if replica is not None:
                replica.stop()
