"""The gateway's image (Dockerfile), read as Docker reads it, and its exec-form CMD and HEALTHCHECK run
outside a container against a real gateway (PostgreSQL, Redis, LiteLLM and the fake provider): no Docker
engine runs here, so this is what proves the image's commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from devstack import services
from devstack.stack import gateway_env, migrate
from tests.deploy.conftest import ROOT, Dockerfile, known_variables

VENV_BIN = Path(sys.executable).parent


def test_slim_non_root_no_demo_config_and_no_migration_on_start() -> None:
    image = Dockerfile.read(ROOT / "Dockerfile")
    assert [rest for word, rest in image.final if word == "FROM"] == ["python:3.11-slim"]
    user = image.last("USER").split(":")[0]
    assert user not in ("root", "0") and user.isdigit()  # numeric: Kubernetes' runAsNonRoot can check it
    copied = [rest for stage in image.stages for word, rest in stage if word in ("COPY", "ADD")]
    assert not any(word == "ADD" for stage in image.stages for word, _ in stage)
    assert not any("litellm_config" in c or "policy.yaml" in c or c.split()[0] == "." for c in copied)
    assert image.exec_form("CMD") == ["creditgate", "serve"]
    assert image.exec_form("HEALTHCHECK") == ["creditgate", "healthcheck"]
    assert not any(word == "ENTRYPOINT" for word, _ in image.final)
    env = image.env()
    ours = {k for k in env if k.startswith("CREDITGATE_")}
    assert ours <= known_variables(), ours - known_variables()
    # the operator's configuration is mounted at /etc/creditgate, never baked in
    assert env["CREDITGATE_LITELLM_CONFIG"] == "/etc/creditgate/litellm_config.yaml"
    assert env["CREDITGATE_POLICY_CONFIG"] == "/etc/creditgate/policy.yaml"
    assert image.last("EXPOSE") == env["CREDITGATE_PORT"] and env["CREDITGATE_HOST"] == "0.0.0.0"
    # the build context holds exactly what is copied: no venvs (GBs), no demo configuration
    kept = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    sources = {part.rstrip("/") for c in copied if not c.startswith("--from") for part in c.split()[:-1]}
    assert sources == kept and "*" in (ROOT / ".dockerignore").read_text().splitlines()


def test_cmd_serves_and_healthcheck_answers_0_when_up_and_1_when_down(
        pg: services.Service, redis_server: services.Service, litellm: services.Service,
        fake_provider: services.Service, tmp_path: Path) -> None:
    image = Dockerfile.read(ROOT / "Dockerfile")
    mounted = tmp_path / "etc-creditgate"  # what the operator mounts at /etc/creditgate
    mounted.mkdir()
    config = services.render_litellm_config(fake_provider.url, mounted / "litellm_config.yaml")
    policy = Path(shutil.copy(ROOT / "policy.yaml", mounted / "policy.yaml"))
    database = services.create_database(pg.url, "deploy_image")
    migrate(database)  # its own step, as the compose service and the Job run it
    port = services.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITGATE_")}
    env.update({k: v for k, v in image.env().items() if k != "PATH"})
    env.update(gateway_env(database, redis_server.url, litellm.url, litellm_config=config, policy=policy))
    # outside a container: loopback instead of 0.0.0.0, a free port, the spool in a scratch folder
    env.update({"CREDITGATE_HOST": "127.0.0.1", "CREDITGATE_PORT": str(port),
                "CREDITGATE_SPOOL_DIR": str(tmp_path / "spool"), "PATH": f"{VENV_BIN}{os.pathsep}{env['PATH']}"})

    def healthcheck() -> subprocess.CompletedProcess[str]:
        return subprocess.run(image.exec_form("HEALTHCHECK"), env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=30)

    assert healthcheck().returncode == 1  # nothing listens yet
    log = services.logdir() / f"deploy-image-gateway-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(image.exec_form("CMD"), env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    gateway = services.Service(name="gateway", proc=proc, port=port, url=f"http://127.0.0.1:{port}", log=log)
    try:
        services.wait_until(lambda: httpx.get(f"{gateway.url}/readyz", timeout=2).status_code == 200, gateway, 60)
        answer = healthcheck()
        assert (answer.returncode, answer.stderr) == (0, "")
    finally:
        gateway.stop()
    assert proc.returncode == 0  # stopped cleanly by SIGTERM
    answer = healthcheck()
    assert answer.returncode == 1
    assert answer.stderr.startswith(f"creditgate: healthcheck: http://127.0.0.1:{port}/healthz: ")
