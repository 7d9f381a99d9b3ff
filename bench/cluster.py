"""The whole product on loopback for `make chaos` and `make bench-correctness`, with parts that can be killed
and started again on the same port and data.

Two `creditgate serve` replicas (one database, one Redis, each its own settlement spool, as two pods), LiteLLM
1.106.2 in front of the fake provider, PostgreSQL (its cluster kept across restarts), Redis and a real
Prometheus scraping both replicas. Every process comes from devstack.services' launchers (stopped by PID, the
kernel stops them if this process dies); nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devstack import services
from devstack.admin_client import AdminClient
from devstack.stack import gateway_env, migrate

HOLD_TTL_SECONDS = 6  # a killed replica's holds expire within the run (checkpoints every 2 s)
SWEEP_INTERVAL_SECONDS = 1
UPSTREAM_TIMEOUT_SECONDS = 2.0  # the slow provider's stalls past it are 504s
DRAIN_SECONDS = 4  # SIGTERM: streams still open after this end with the error event, settled estimate


def chaos_policy(directory: Path) -> Path:
    """The shipped policy.yaml with a short hold TTL (the sweeper's work is seen within the run)."""
    lines = []
    for line in (services.ROOT / "policy.yaml").read_text().splitlines():
        if line.startswith("hold_ttl_seconds:"):
            line = f"hold_ttl_seconds: {HOLD_TTL_SECONDS}"
        elif line.startswith("sweep_interval_seconds:"):
            line = f"sweep_interval_seconds: {SWEEP_INTERVAL_SECONDS}"
        lines.append(line)
    path = directory / "policy.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Cluster:
    """What `start_cluster` started; `stop()` ends it all, whatever state each part is in."""

    home: Path
    pg_dir: Path
    pg: services.Service
    redis: services.Service
    provider: services.Service
    litellm: services.Service
    litellm_config: Path
    env: dict[str, str]  # the replicas' shared variables (database, Redis, LiteLLM, secrets, policy)
    replicas: list[services.Service] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    prometheus: services.Service | None = None

    @property
    def dsn(self) -> str:
        return self.env["CREDITGATE_DATABASE_URL"]

    @property
    def admin_token(self) -> str:
        return self.env["CREDITGATE_ADMIN_TOKEN"]

    def admin(self) -> AdminClient:
        return AdminClient(self.replicas[0].url, self.admin_token)

    def replica_env(self, i: int) -> dict[str, str]:
        return {**self.env, "CREDITGATE_SPOOL_DIR": str(self.home / f"spool-{i}")}

    def start_replica(self, i: int) -> None:
        """(Re)start replica `i` on its port with its spool (a restarted pod keeps its volume)."""
        self.replicas[i] = services.start_gateway(self.replica_env(i), port=self.ports[i])

    def kill_replica(self, i: int) -> None:
        self.replicas[i].kill()

    def terminate_replica(self, i: int, timeout: float = 60.0) -> int:
        """SIGTERM: the replica drains and exits by itself; returns its exit status."""
        svc = self.replicas[i]
        os.killpg(svc.proc.pid, signal.SIGTERM)
        code = svc.proc.wait(timeout)
        svc.stop()  # its scratch folder
        return code

    def stop_postgres(self) -> None:
        """Fast shutdown (SIGINT): every client connection is cut, the data stays."""
        self.pg.stop()

    def start_postgres(self) -> None:
        self.pg = services.start_postgres(port=self.pg.port, workdir=self.pg_dir)

    def stop_redis(self) -> None:
        self.redis.stop()

    def start_redis(self) -> None:
        self.redis = services.start_redis(self.redis.port)

    def kill_litellm(self) -> None:
        self.litellm.kill()

    def start_litellm(self) -> None:
        self.litellm = services.start_litellm(self.litellm_config, self.litellm.port)

    def prometheus_query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query against the cluster's Prometheus (empty without one)."""
        if self.prometheus is None:
            return []
        answer = httpx.get(f"{self.prometheus.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        return list(answer["data"]["result"]) if answer.get("status") == "success" else []

    def stop(self) -> None:
        parts = [*self.replicas, self.prometheus, self.litellm, self.provider, self.redis, self.pg]
        for svc in parts:
            if svc is not None:
                svc.stop()
        shutil.rmtree(self.pg_dir, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)


def start_cluster(replicas: int = 2, prometheus: bool = True) -> Cluster:
    """Start everything (LiteLLM boots for seconds: launched first, waited for last); on any failure what was
    started is stopped."""
    home = services.scratch("chaos-")
    # PostgreSQL's cluster where the postgres user can reach it (as devstack's throwaway clusters are)
    pg_dir = Path(tempfile.mkdtemp(prefix="creditgate-chaos-pg-"))
    started: list[services.Service] = []
    try:
        provider = services.start_fake_provider()
        started.append(provider)
        config = services.render_litellm_config(provider.url, home / "litellm_config.yaml")
        litellm = services.launch_litellm(config)
        started.append(litellm)
        pg = services.start_postgres(workdir=pg_dir)
        started.append(pg)
        redis = services.start_redis()
        started.append(redis)
        database = services.create_database(pg.url, "chaos")
        migrate(database)
        env = gateway_env(database, redis.url, litellm.url, litellm_config=config, policy=chaos_policy(home), extra={
            "CREDITGATE_UNREADY_GRACE_SECONDS": "0", "CREDITGATE_DRAIN_SECONDS": str(DRAIN_SECONDS),
            "CREDITGATE_UPSTREAM_TIMEOUT_SECONDS": str(UPSTREAM_TIMEOUT_SECONDS)})
        services.litellm_ready(litellm)
        cluster = Cluster(home, pg_dir, pg, redis, provider, litellm, config, env)
        for i in range(replicas):
            cluster.ports.append(services.free_port())
            cluster.replicas.append(services.start_gateway(cluster.replica_env(i), port=cluster.ports[i]))
            started.append(cluster.replicas[-1])
        if prometheus:
            cluster.prometheus = services.start_prometheus([r.url.removeprefix("http://") for r in cluster.replicas])
        return cluster
    except BaseException:
        for svc in reversed(started):
            svc.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        raise


def wait_ready(url: str, timeout: float = 30.0) -> bool:
    """Whether `url`/readyz answered 200 within `timeout` (a replica after PostgreSQL or Redis came back)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False
