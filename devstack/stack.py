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

from devstack import services, state
from devstack.ports import Ports
from devstack.services import ROOT, Service
from devstack.state import Kept


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
    """What `make run` started, in start order, and what the gateway was started with."""

    home: Path
    ports: Ports
    services: list[Service] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    gateway: Service | None = None
    kept: Kept | None = None  # the demo state the database holds (None: a fresh database, to seed)

    def stop(self) -> None:
        """Stop every service, the gateway first, each by process group (SIGKILL after a bounded wait)."""
        for svc in reversed(self.services):
            svc.stop()

    def url(self, name: str) -> str:
        return next(svc.url for svc in self.services if svc.name == name)


def start_stack(stack: Stack, kept: Kept | None) -> None:
    """Start everything `make run` needs into `stack`, with the database kept in `stack.home` when `kept` says
    there is demo data to reuse, else a fresh one; the caller stops `stack` whatever happens.

    LiteLLM boots for seconds, so it is launched first and waited for last.
    """
    home, ports = stack.home, stack.ports
    provider_url = f"http://127.0.0.1:{ports.fake_provider}"
    config = services.render_litellm_config(provider_url, home / "litellm_config.yaml")
    stack.services.append(litellm := services.launch_litellm(config, ports.litellm))
    stack.services.append(pg := services.start_postgres(fsync=True, port=ports.postgres,
                                                        workdir=home / state.POSTGRES_DIR))
    stack.services.append(redis := services.start_redis(ports.redis))
    stack.services.append(services.start_fake_provider(ports.fake_provider))
    db, existed = services.ensure_database(pg.url, "creditgate")
    if existed and kept is not None and kept.demo is not None:
        stack.kept = kept
    else:
        if existed:  # data without a kept demo key (a first run stopped before seeding): start it over
            services.create_database(pg.url, "creditgate")
        kept = state.new_secrets()
    # no load balancer to tell before stopping: Ctrl-C stops at once unless the developer asks otherwise
    grace = os.environ.get("CREDITGATE_UNREADY_GRACE_SECONDS", "0")
    stack.env = gateway_env(db, redis.url, litellm.url, litellm_config=config,
                            extra={"CREDITGATE_ADMIN_TOKEN": kept.admin_token, "CREDITGATE_BYOK_KEYS": kept.byok_keys,
                                   "CREDITGATE_UNREADY_GRACE_SECONDS": grace})
    migrate(db)  # every start: migrations are idempotent, and a kept database may predate new ones
    services.litellm_ready(litellm)
    stack.gateway = services.start_gateway(stack.env, port=ports.gateway)
    stack.services.append(stack.gateway)
