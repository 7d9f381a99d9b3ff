"""The `creditgate` command: serve, migrate, verify.

`serve` validates the whole configuration first and stops with one line per mistake; `migrate` and
`verify` need only CREDITGATE_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

from proxy.config.settings import ConfigError, Settings


def _database_url() -> str:
    dsn = os.environ.get("CREDITGATE_DATABASE_URL", "").strip()
    if not dsn:
        raise ConfigError("CREDITGATE_DATABASE_URL is required but not set")
    return dsn


def serve() -> int:
    settings = Settings.from_env()
    from proxy.app import load_config

    load_config(settings)  # a bad policy file or model list stops here, one line per mistake
    import uvicorn

    metrics_dir = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # metrics must add up across worker processes (prometheus_client multiprocess mode, which reads this
        # variable in every worker); ours, so removed when the server stops
        metrics_dir = tempfile.mkdtemp(prefix="creditgate-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
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
            timeout_graceful_shutdown=30,
            lifespan="on",
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return 0


def migrate() -> int:
    from proxy.db.migrate import migrate as run_migrations

    applied = asyncio.run(run_migrations(_database_url()))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def verify() -> int:
    from proxy.ledger.verify import main_verify

    return main_verify(_database_url())


COMMANDS = {"serve": serve, "migrate": migrate, "verify": verify}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="creditgate", description="LLM billing gateway in front of LiteLLM")
    parser.add_argument("command", choices=sorted(COMMANDS), help="serve | migrate | verify")
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command]()
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"creditgate: configuration error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
