"""The whole product through the real stack: a `creditgate serve` process in front of the real LiteLLM
and the fake provider, with real PostgreSQL and Redis. Each test makes its own orgs and members."""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from devstack import services
from devstack.admin_client import AdminClient
from devstack.stack import gateway_env, migrate

_seq = itertools.count(1)


@dataclass
class Gateway:
    svc: services.Service
    env: dict[str, str]
    admin: AdminClient

    @property
    def url(self) -> str:
        return self.svc.url

    def stop(self) -> None:
        """Close its admin client and stop the process."""
        self.admin.close()
        self.svc.stop()


@dataclass
class Member:
    org_id: str
    user_id: str
    key_id: str
    key: str
    gateway: Gateway

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway.url}/v1", api_key=self.key, max_retries=0, **kwargs)

    def aclient(self, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.gateway.url}/v1", api_key=self.key, max_retries=0, **kwargs)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway.url, headers={"authorization": f"Bearer {self.key}"}, timeout=60)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        with self.http() as http:
            return http.get(path, **kwargs)


def write_policy(directory: Path, **overrides: Any) -> Path:
    text = (services.ROOT / "policy.yaml").read_text()
    for key, value in overrides.items():
        lines = [f"{key}: {value}" if line.startswith(f"{key}:") else line for line in text.splitlines()]
        text = "\n".join(lines) + "\n"
    path = directory / "policy.yaml"
    path.write_text(text)
    return path


def start_gateway(pg: services.Service, redis_server: services.Service, litellm: services.Service,
                  fake_provider: services.Service, *, name: str, workers: int = 1, policy: Path | None = None,
                  database_url: str | None = None, env: dict[str, str] | None = None) -> Gateway:
    tmp = services.scratch("e2e-")
    config = services.render_litellm_config(fake_provider.url, tmp / "litellm_config.yaml")
    if database_url is None:
        database_url = services.create_database(pg.url, name)
        migrate(database_url)
    # each gateway its own spool directory (a restart given the same `env` reuses it, as a pod's volume)
    # no unready grace: nothing routes by readiness here, so a gateway stops (SIGTERM) without waiting for it
    full_env = env or gateway_env(database_url, redis_server.url, litellm.url, litellm_config=config, policy=policy,
                                  extra={"CREDITGATE_SPOOL_DIR": str(tmp / "spool"),
                                         "CREDITGATE_UNREADY_GRACE_SECONDS": "0"})
    svc = services.start_gateway(full_env, workers=workers)
    return Gateway(svc, full_env, AdminClient(svc.url, full_env["CREDITGATE_ADMIN_TOKEN"]))


@pytest.fixture(scope="session")
def gateway(pg: services.Service, redis_server: services.Service, litellm: services.Service,
            fake_provider: services.Service) -> Iterator[Gateway]:
    gw = start_gateway(pg, redis_server, litellm, fake_provider, name="e2e")
    yield gw
    gw.stop()


@pytest.fixture
def replica(gateway: Gateway, pg: services.Service, redis_server: services.Service, litellm: services.Service,
            fake_provider: services.Service) -> Iterator[Gateway]:
    """A second replica of the session's gateway: the same database, Redis, LiteLLM and settings."""
    second = start_gateway(pg, redis_server, litellm, fake_provider, name="e2e",
                           database_url=gateway.env["CREDITGATE_DATABASE_URL"], env=gateway.env)
    yield second
    second.svc.stop()


def make_member(gw: Gateway, *, tier: str = "starter", credit: int | None = 100_000_000,
                allocation: int | None = None, period: str = "none", org_id: str | None = None,
                bound: bool = False, **member_fields: Any) -> Member:
    n = next(_seq)
    org = org_id or gw.admin.org(f"Org {n}", tier)
    user = gw.admin.user(f"user{n}-{secrets.token_hex(3)}@example.com", f"User {n}")
    gw.admin.member(org, user, allocation_millicredits=allocation, allocation_period=period, **member_fields)
    if credit and org_id is None:
        gw.admin.grant(org, credit)
    key_id, key = gw.admin.key(user, org if bound else None)
    return Member(org, user, key_id, key, gw)


def join(gw: Gateway, member: Member, org_id: str, **fields: Any) -> None:
    gw.admin.member(org_id, member.user_id, **fields)


def stream_then_kill(member: Member, gateway: Gateway, model: str, request_id: str) -> None:
    """Stream a long answer through `gateway` and SIGKILL its process group past at least one checkpoint
    (every hold ttl / 3 = 1 s with the tests' policy); returns once the replica is gone."""

    async def run() -> None:
        client = member.aclient()
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "long"}], stream=True,
            extra_headers={"X-Request-Id": request_id}, extra_body={"fake_chunks": 200, "fake_delay_ms": 25})
        started = time.monotonic()
        async for _ in stream:
            if time.monotonic() - started > 2.5:
                os.killpg(gateway.svc.proc.pid, signal.SIGKILL)
                break
        await client.close()

    asyncio.run(run())
    gateway.svc.proc.wait(10)
