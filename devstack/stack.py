"""The whole stack on loopback: PostgreSQL, Redis, the fake provider, LiteLLM and the gateway."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from devstack import services
from devstack.services import ROOT, Service


def gateway_env(database_url: str, redis_url: str, litellm_url: str, *, policy: Path | None = None,
                litellm_config: Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """CREDITGATE_* variables for a gateway in front of `litellm_url`, with fresh secrets."""
    env = {
        "CREDITGATE_DATABASE_URL": database_url,
        "CREDITGATE_REDIS_URL": redis_url,
        "CREDITGATE_UPSTREAM_URL": litellm_url,
        "CREDITGATE_UPSTREAM_KEY": services.MASTER_KEY,
        "CREDITGATE_ADMIN_TOKEN": "cg-admin-" + secrets.token_urlsafe(24),
        "CREDITGATE_BYOK_KEYS": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "CREDITGATE_LITELLM_CONFIG": str(litellm_config or ROOT / "litellm_config.yaml"),
        "CREDITGATE_POLICY_CONFIG": str(policy or ROOT / "policy.yaml"),
    }
    env.update(extra or {})
    return env


def migrate(database_url: str) -> None:
    subprocess.run([sys.executable, "-m", "proxy.cli", "migrate"], check=True, cwd=ROOT,
                   env={**os.environ, "CREDITGATE_DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)},
                   stdout=subprocess.DEVNULL)


@dataclass
class Stack:
    services: list[Service] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    gateway: Service | None = None

    def stop(self) -> None:
        for svc in reversed(self.services):
            svc.stop()


def start_stack(workdir: Path, *, fsync: bool = True, gateway_port: int | None = None) -> Stack:
    """Everything `make run` needs, started in dependency order; stops what started if one fails."""
    stack = Stack()
    try:
        pg = services.start_postgres(fsync=fsync)
        stack.services.append(pg)
        stack.services.append(redis := services.start_redis())
        stack.services.append(provider := services.start_fake_provider())
        config = services.render_litellm_config(provider.url, workdir / "litellm_config.yaml")
        stack.services.append(litellm := services.start_litellm(config))
        db = services.create_database(pg.url, "creditgate")
        stack.env = gateway_env(db, redis.url, litellm.url, litellm_config=config)
        migrate(db)
        stack.gateway = services.start_gateway(stack.env, port=gateway_port)
        stack.services.append(stack.gateway)
    except BaseException:
        stack.stop()
        raise
    return stack
