"""The `creditgate` command as operators run it: migrate (idempotent; --grant), verify, healthcheck (the
image's probe), and serve's start-up check of the configuration (one line per mistake, naming the variable)."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson

from devstack import services
from devstack.stack import gateway_env
from proxy.cli import HangupRelay
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
    for command in ("migrate", "verify", "export-off"):
        answer = run(command, env={})
        assert (answer.returncode, answer.stderr.strip()) == (
            2, "creditgate: configuration error: CREDITGATE_DATABASE_URL is required but not set")


def _serve_healthz(status: int) -> tuple[http.server.ThreadingHTTPServer, threading.Thread]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            code = status if self.path == "/healthz" else 404
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def test_healthcheck_exits_0_on_a_200_from_healthz_and_1_otherwise() -> None:
    for status, expected in ((200, 0), (503, 1)):
        server, thread = _serve_healthz(status)
        try:
            answer = run("healthcheck", env={"CREDITGATE_HOST": "0.0.0.0", "CREDITGATE_PORT": str(server.server_port),
                                             "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"})
        finally:
            server.shutdown()
            thread.join(5)
            server.server_close()
        assert answer.returncode == expected, answer.stderr
    port = services.free_port()  # nothing listens there
    answer = run("healthcheck", env={"CREDITGATE_PORT": str(port)})
    assert answer.returncode == 1
    assert answer.stderr.startswith(f"creditgate: healthcheck: http://127.0.0.1:{port}/healthz: ")


def test_migrate_grant_needs_an_existing_role_and_goes_only_with_migrate(fresh_db: str) -> None:
    env = {"CREDITGATE_DATABASE_URL": fresh_db}
    missing = run("migrate", "--grant", "cg_no_such_role", env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip() == ("creditgate: configuration error: --grant cg_no_such_role: no such database "
                                      "role (create it first: CREATE ROLE ... LOGIN)")
    wrong = run("serve", "--grant", "someone", env=env)
    assert wrong.returncode == 2 and wrong.stderr.strip().endswith("error: --grant goes with migrate")


def test_serve_and_migrate_without_postgres_say_so_in_one_line_without_the_password(tmp_path: Path) -> None:
    port = services.free_port()  # nothing listens there
    env = gateway_env(f"postgresql://cg:hunter2-secret@127.0.0.1:{port}/creditgate", "redis://127.0.0.1:9/0",
                      "http://127.0.0.1:9", extra={"CREDITGATE_STARTUP_WAIT_SECONDS": "0.5"})
    line = f"creditgate: cannot reach PostgreSQL at CREDITGATE_DATABASE_URL (127.0.0.1:{port}): connection refused"
    served = run("serve", env=env)
    assert served.returncode == 1
    *waited, last = served.stderr.strip().splitlines()
    assert last == line
    assert [orjson.loads(w)["msg"] for w in waited] == [
        f"{line.removeprefix('creditgate: ')}; waiting up to 0.5 s (CREDITGATE_STARTUP_WAIT_SECONDS)"]
    migrated = run("migrate", env={"CREDITGATE_DATABASE_URL": env["CREDITGATE_DATABASE_URL"]})
    assert (migrated.returncode, migrated.stderr.strip()) == (1, line)
    assert "hunter2" not in served.stderr + migrated.stderr and "Traceback" not in served.stderr + migrated.stderr


def test_serve_on_an_unmigrated_database_is_not_ready_says_what_to_run_and_answers_json(
        pg: services.Service, redis_server: services.Service) -> None:
    """Then `creditgate migrate` while it runs makes it ready, without a restart, and the log has told it once."""
    database_url = services.create_database(pg.url, "cli_unmigrated")
    env = gateway_env(database_url, redis_server.url, "http://127.0.0.1:9")
    gateway = services.start_gateway(env)
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as http:
            ready = http.get("/readyz")
            assert ready.status_code == 503
            assert (ready.json()["checks"]["schema"], ready.json()["details"]["schema"]) == (
                "failed", f"schema not migrated, this release needs {discover()[-1].name}: run `creditgate migrate`")
            admin = {"authorization": f"Bearer {env['CREDITGATE_ADMIN_TOKEN']}"}
            for method, path in (("POST", "/admin/orgs"), ("GET", "/admin/orgs"), ("GET", "/v1/credits"),
                                 ("POST", "/v1/chat/completions")):
                answer = http.request(method, path, headers=admin, json={"name": "a", "tier": "free"})
                assert (answer.status_code, answer.headers["content-type"], answer.json()["error"]["code"]) == (
                    503, "application/json", "ledger_unavailable")
            time.sleep(2.5)  # the sweeper and the key cache run meanwhile: nothing repeats in the log
            assert run("migrate", env={"CREDITGATE_DATABASE_URL": database_url}).returncode == 0
            deadline = time.monotonic() + 15
            while http.get("/readyz").json()["checks"]["schema"] != "ok":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            created = http.post("/admin/orgs", headers=admin, json={"name": "a", "tier": "free"})
            assert created.status_code == 201
    finally:
        gateway.stop()
    log = gateway.log.read_text()
    assert "Traceback" not in log
    lines = [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]
    expected = discover()[-1].name
    schema = [line["msg"] for line in lines if line.get("check") == "schema" and line["logger"] == "creditgate.health"]
    assert schema[:2] == [f"schema not migrated, this release needs {expected}: run `creditgate migrate`",
                          "readiness check failed"]
    assert schema[-2:] == [f"schema at {expected}", "readiness check ok"]
    # each migration commits on its own: a read during `migrate` may see (and log) a step on the way
    assert all(m.startswith("schema at 000") and m.endswith("pending): run `creditgate migrate`") for m in schema[2:-2])
    sweeper = [line["msg"] for line in lines if line["logger"] == "creditgate.sweeper"]
    assert sweeper == ["sweeps skipped until the ledger answers: ledger_unavailable", "sweeps resumed"]


def test_export_off_stops_new_events_and_says_how_many_still_wait(fresh_db: str) -> None:
    env = {"CREDITGATE_DATABASE_URL": fresh_db}
    assert run("migrate", env=env).returncode == 0
    sql = [sys.executable, "-c", (
        "import asyncio, asyncpg, sys\n"
        "async def main():\n"
        "    c = await asyncpg.connect(sys.argv[1])\n"
        "    print(await c.fetchval(sys.argv[2]))\n"
        "    await c.close()\n"
        "asyncio.run(main())\n")]

    def query(statement: str) -> str:
        return subprocess.run([*sql, fresh_db, statement], capture_output=True, text=True, check=True).stdout.strip()

    query("UPDATE creditgate.export_settings SET enabled = true")  # as a replica with an export URL does
    query("SELECT creditgate.export_enqueue('org_x', 'credit_grant', 'grant#1', now(), '{}')")
    off = run("export-off", env=env)
    assert (off.returncode, off.stdout.strip()) == (
        0, "export off: no new events are written; 1 event(s) still waiting for delivery")
    assert query("SELECT enabled FROM creditgate.export_settings") == "False"
    assert query("SELECT creditgate.export_on()") == "False"
    unreachable = run("export-off", env={"CREDITGATE_DATABASE_URL": "postgresql://u:sekrit@127.0.0.1:9/db"})
    assert unreachable.returncode == 1 and "sekrit" not in unreachable.stderr
    assert unreachable.stderr.startswith("creditgate: cannot reach PostgreSQL at CREDITGATE_DATABASE_URL")


class FakeWorker:
    def __init__(self, pid: int | None, ready: bool) -> None:
        self.pid, self.ready = pid, ready

    def is_ready(self, timeout: float) -> bool:
        return self.ready


def test_a_worker_still_starting_gets_the_sighup_once_it_serves() -> None:
    """It may have read the files before they changed: the supervisor's next round (every 0.5 s) sends it
    the signal once it serves, once; a worker replaced meanwhile read the files afresh and gets nothing."""
    sent: list[tuple[int, int]] = []
    relay = HangupRelay(kill=lambda pid, sig: sent.append((pid, sig)))
    serving, starting, replaced, unstarted = FakeWorker(11, True), FakeWorker(12, False), FakeWorker(13, False), \
        FakeWorker(None, False)
    workers = [serving, starting, replaced, unstarted]
    relay.owe(workers)
    assert sent == [(11, signal.SIGHUP)]
    relay.pay(workers)  # still starting
    assert sent == [(11, signal.SIGHUP)]
    starting.ready, replaced.ready = True, True
    workers[2] = FakeWorker(14, True)  # the supervisor replaced a worker that died
    relay.pay(workers)
    relay.pay(workers)
    assert sent == [(11, signal.SIGHUP), (12, signal.SIGHUP)]
    relay.owe(workers)  # the next SIGHUP reaches every worker serving
    assert sent[2:] == [(11, signal.SIGHUP), (12, signal.SIGHUP), (14, signal.SIGHUP)]
