"""The `creditgate` command: serve, migrate, verify, healthcheck, export-off.

`serve` validates the whole configuration first and stops with one line per mistake; `migrate`, `verify`
and `export-off` need only CREDITGATE_DATABASE_URL; `migrate --grant ROLE` then grants the runtime role what
the gateway needs (proxy/db/grants.py). `export-off` stops writing usage events to the export outbox, which a
replica started with CREDITGATE_EXPORT_URL switched on (remove that variable from every replica first: one
started with it switches the outbox on again). `healthcheck` is the container's probe: GET /healthz on this host's
CREDITGATE_PORT, exit 0 when it answers 200 within 2 s, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from proxy.config.settings import ConfigError, Settings, StartupError


def _database_url() -> str:
    dsn = os.environ.get("CREDITGATE_DATABASE_URL", "").strip()
    if not dsn:
        raise ConfigError("CREDITGATE_DATABASE_URL is required but not set")
    return dsn


def serve() -> int:
    settings = Settings.from_env()
    from proxy.app import load_config

    load_config(settings)  # a bad policy file or model list stops here, one line per mistake
    from proxy.ops.health import preflight
    from proxy.ops.logs import configure_logging

    configure_logging(settings.log_level)
    asyncio.run(preflight(settings))  # PostgreSQL unreachable: StartupError, one line (after a bounded wait)

    metrics_dir = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # metrics must add up across worker processes (prometheus_client multiprocess mode, which reads this
        # variable in every worker); ours, so removed when the server stops
        metrics_dir = tempfile.mkdtemp(prefix="creditgate-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _serve_uvicorn(
            "proxy.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop="uvloop",
            http="httptools",
            access_log=False,
            server_header=False,
            log_config=None,
            # SIGTERM is the drain's (proxy/ops/drain.py): uvicorn stops once every model request has settled,
            # so what it still waits for is a quick admin or caller request
            timeout_graceful_shutdown=3,
            lifespan="on",
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return 0


class HangupRelay:
    """Which workers are still owed a SIGHUP. A worker gets it once it serves: before that its app has not
    taken the signal over (its default would end the process), yet it may have read the files before they
    changed. A worker replaced in the meantime read them afresh and is owed nothing."""

    def __init__(self, kill: Callable[[int, int], None] = os.kill) -> None:
        self._kill = kill
        self._owed: list[Any] = []

    def owe(self, workers: Sequence[Any]) -> None:
        self._owed = list(workers)
        self.pay(workers)

    def pay(self, workers: Sequence[Any]) -> None:
        waiting = []
        for worker in self._owed:
            if worker not in workers or worker.pid is None:
                continue
            if worker.is_ready(timeout=1):
                self._kill(worker.pid, signal.SIGHUP)
            else:
                waiting.append(worker)
        self._owed = waiting


def _serve_uvicorn(app: str, **options: Any) -> None:
    """`uvicorn.run`, except that with several workers SIGHUP reaches every worker (each reloads its
    configuration: proxy/config/reload.py) instead of making uvicorn's supervisor restart them all; a worker
    still starting gets it as soon as it serves (`HangupRelay`)."""
    import uvicorn
    from uvicorn.supervisors.multiprocess import Multiprocess

    if options.get("workers", 1) <= 1:
        # until the app's reloader takes SIGHUP over, the signal's default would end the process
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        uvicorn.run(app, **options)
        return

    relay = HangupRelay()

    class Workers(Multiprocess):
        def handle_hup(self) -> None:
            relay.owe(self.processes)

        def keep_subprocess_alive(self) -> None:  # every 0.5 s
            super().keep_subprocess_alive()
            relay.pay(self.processes)

    config = uvicorn.Config(app, **options)
    Workers(config, sockets=[config.bind_socket()]).run()


def migrate(grant: str | None = None) -> int:
    from proxy.db.migrate import migrate as run_migrations

    dsn = _database_url()
    applied = asyncio.run(run_migrations(dsn))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    if grant is not None:
        from proxy.db.grants import grant_runtime

        asyncio.run(grant_runtime(dsn, grant))
        print(f"granted {grant} the runtime privileges (rows, sequences, functions; no DDL)")
    return 0


def verify() -> int:
    from proxy.ledger.verify import main_verify

    return main_verify(_database_url())


def export_off() -> int:
    from proxy.export.outbox import PgOutbox

    async def run(dsn: str) -> int:
        from proxy.db.pool import UNAVAILABLE, create_pool, unreachable_line

        try:
            pool = await create_pool(dsn, max_size=1)
            try:
                return await PgOutbox(pool).disable()
            finally:
                await pool.close()
        except UNAVAILABLE as exc:  # one line naming the variable, never the password
            raise StartupError(unreachable_line(dsn, exc)) from None

    waiting = asyncio.run(run(_database_url()))
    print(f"export off: no new events are written; {waiting} event(s) still waiting for delivery")
    return 0


def healthcheck() -> int:
    """The image's HEALTHCHECK: stdlib only, so it starts fast; the host is CREDITGATE_HOST unless that is a
    wildcard (0.0.0.0, ::) or unset, then loopback."""
    import urllib.error
    import urllib.request

    host = os.environ.get("CREDITGATE_HOST", "").strip()
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    port = os.environ.get("CREDITGATE_PORT", "").strip() or "8080"
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP(S)_PROXY
    try:
        with opener.open(url, timeout=2) as answer:
            ok = answer.status == 200
    except (OSError, ValueError, urllib.error.URLError) as exc:
        print(f"creditgate: healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


COMMANDS = {"serve": serve, "migrate": migrate, "verify": verify, "healthcheck": healthcheck, "export-off": export_off}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="creditgate", description="LLM billing gateway in front of LiteLLM")
    parser.add_argument("command", choices=sorted(COMMANDS), help="serve | migrate | verify | healthcheck | export-off")
    parser.add_argument("--grant", metavar="ROLE", help="with migrate: then grant ROLE (the gateway's runtime "
                        "database role) exactly the privileges it needs, no DDL")
    args = parser.parse_args(argv)
    if args.grant is not None and args.command != "migrate":
        parser.error("--grant goes with migrate")
    try:
        return migrate(args.grant) if args.command == "migrate" else COMMANDS[args.command]()
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"creditgate: configuration error: {line}", file=sys.stderr)
        return 2
    except StartupError as exc:  # PostgreSQL unreachable: one line naming the variable, never the password
        print(f"creditgate: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
