"""The `creditgate` command as operators run it: migrate (idempotent), verify, and serve's start-up
check of the configuration (one line per mistake, naming the variable)."""

from __future__ import annotations

import os
import subprocess
import sys

from devstack import services
from proxy.db.migrate import discover

CLI = [sys.executable, "-m", "proxy.cli"]


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CREDITGATE_")}
    return subprocess.run([*CLI, *args], env={**base, "PYTHONPATH": str(services.ROOT), **env}, cwd=services.ROOT,
                          capture_output=True, text=True, timeout=120)


def test_migrate_is_idempotent_and_verify_passes_on_a_fresh_ledger(fresh_db: str) -> None:
    env = {"CREDITGATE_DATABASE_URL": fresh_db}
    first, second = run("migrate", env=env), run("migrate", env=env)
    assert (first.returncode, second.returncode) == (0, 0)
    names = [m.name for m in discover()]
    assert first.stdout.strip() == f"applied {len(names)} migration(s): {', '.join(names)}"
    assert names[:3] == ["0001_directory.sql", "0002_ledger.sql", "0003_admin.sql"]
    assert second.stdout.strip() == "applied 0 migration(s)"
    verified = run("verify", env=env)
    assert (verified.returncode, verified.stdout.strip()) == (0, "verify: all ledger invariants hold")


def test_serve_refuses_bad_configuration_with_one_line_per_mistake() -> None:
    answer = run("serve", env={"CREDITGATE_PORT": "abc", "CREDITGATE_BYOK_KEYS": "not-a-fernet-key",
                               "CREDITGATE_UPSTREAM_URL": "ftp://nowhere", "CREDITGATE_ADMIN_TOKEN": "hunter2"})
    assert answer.returncode == 2
    lines = answer.stderr.strip().splitlines()
    assert all(line.startswith("creditgate: configuration error: CREDITGATE_") for line in lines)
    named = {line.split(": ")[2].split()[0] for line in lines}
    assert named == {"CREDITGATE_DATABASE_URL", "CREDITGATE_REDIS_URL", "CREDITGATE_UPSTREAM_URL",
                     "CREDITGATE_UPSTREAM_KEY", "CREDITGATE_ADMIN_TOKEN", "CREDITGATE_BYOK_KEYS",
                     "CREDITGATE_LITELLM_CONFIG", "CREDITGATE_POLICY_CONFIG", "CREDITGATE_PORT"}
    assert "hunter2" not in answer.stderr and "not-a-fernet-key" not in answer.stderr


def test_commands_without_a_database_url_say_so() -> None:
    for command in ("migrate", "verify"):
        answer = run(command, env={})
        assert (answer.returncode, answer.stderr.strip()) == (
            2, "creditgate: configuration error: CREDITGATE_DATABASE_URL is required but not set")
