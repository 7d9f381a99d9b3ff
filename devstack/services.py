"""Start and stop the real services the gateway talks to, on free loopback ports.

Every service is a child process started here and stopped by PID (`Service.stop()`); nothing
listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = Path(os.environ.get("CREDITGATE_LITELLM_VENV", ROOT / ".venv-litellm"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    url: str
    log: Path
    workdir: Path | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for fn in self.cleanup:
            fn()

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, for chaos tests)."""
        self.stop(signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _spawn(name: str, argv: list[str], env: Mapping[str, str] | None, log: Path, cwd: Path | None = None,
           preexec: Callable[[], None] | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True, preexec_fn=preexec,
    )


def wait_until(check: Callable[[], bool], service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited early:\n{service.tail()}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(0.05)
    service.stop()
    raise RuntimeError(f"{service.name} not ready after {timeout}s:\n{service.tail()}")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback only
        return bool(r.status == 200)


def _tcp_ok(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def logdir() -> Path:
    d = Path(os.environ.get("CREDITGATE_LOG_DIR", tempfile.gettempdir())) / "creditgate-logs"
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------- PostgreSQL


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise RuntimeError(f"{name} not found: install PostgreSQL 15 (Debian package 'postgresql')")


def start_postgres(*, fsync: bool = False, extra: Mapping[str, str] | None = None, port: int | None = None,
                   datadir: Path | None = None) -> Service:
    """A throwaway PostgreSQL cluster on 127.0.0.1. As root it runs as the `postgres` user.

    `fsync=False` is for tests (speed); benchmarks pass `fsync=True` and keep synchronous_commit on.
    The DSN is `Service.url` (user postgres, database postgres, trust auth on loopback).
    """
    port = port or free_port()
    as_root = os.geteuid() == 0
    fresh = datadir is None
    workdir = Path(tempfile.mkdtemp(prefix="creditgate-pg-")) if fresh else datadir.parent  # type: ignore[union-attr]
    data = datadir or workdir / "data"
    runas: list[str] = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(workdir, "postgres", "postgres")
        os.chmod(workdir, 0o700)
    log = logdir() / f"postgres-{port}.log"
    if fresh:
        subprocess.run(
            [*runas, _pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-locale"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
    settings = {
        "listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": str(workdir),
        "fsync": "on" if fsync else "off", "full_page_writes": "on" if fsync else "off",
        "synchronous_commit": "on", "max_connections": "300", "shared_buffers": "256MB",
        "log_min_messages": "warning", "timezone": "UTC",
    }
    settings.update(extra or {})
    argv = [*runas, _pg_bin("postgres"), "-D", str(data)]
    for k, v in settings.items():
        argv += ["-c", f"{k}={v}"]
    proc = _spawn("postgres", argv, None, log)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    svc = Service("postgres", proc, port, url, log, workdir)
    if fresh:
        svc.cleanup.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
    wait_until(lambda: _pg_ready(port), svc, 30)
    return svc


def _pg_ready(port: int) -> bool:
    return subprocess.run(
        ["pg_isready", "-h", "127.0.0.1", "-p", str(port)] if shutil.which("pg_isready") else
        [sys.executable, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"],
        capture_output=True,
    ).returncode == 0


def create_database(admin_url: str, name: str) -> str:
    """CREATE DATABASE `name` (drop first) and return its DSN."""
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(run())
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


# ---------------------------------------------------------------- Redis


def start_redis(port: int | None = None) -> Service:
    port = port or free_port()
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server not found: apt-get install -y redis-server")
    workdir = Path(tempfile.mkdtemp(prefix="creditgate-redis-"))
    log = logdir() / f"redis-{port}.log"
    proc = _spawn("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                            "--dir", str(workdir), "--protected-mode", "yes"], None, log)
    svc = Service("redis", proc, port, f"redis://127.0.0.1:{port}/0", log, workdir)
    svc.cleanup.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
    wait_until(lambda: _tcp_ok(port), svc, 15)
    return svc


# ---------------------------------------------------------------- LiteLLM and the fake provider

MASTER_KEY = "sk-litellm-master-devstack"


def start_fake_provider(port: int | None = None) -> Service:
    """Our OpenAI-compatible fake provider (devstack/fake_provider.py) in its own process."""
    port = port or free_port()
    log = logdir() / f"fake-provider-{port}.log"
    proc = _spawn("fake-provider", [sys.executable, "-m", "devstack.fake_provider", "--port", str(port)],
                  {**os.environ, "PYTHONPATH": str(ROOT)}, log, cwd=ROOT)
    svc = Service("fake-provider", proc, port, f"http://127.0.0.1:{port}", log)
    wait_until(lambda: _http_ok(f"{svc.url}/_health"), svc, 20)
    return svc


def render_litellm_config(provider_url: str, dest: Path, source: Path | None = None) -> Path:
    """The shipped litellm_config.yaml with the fake provider's address filled in."""
    text = (source or ROOT / "litellm_config.yaml").read_text()
    dest.write_text(text.replace("http://127.0.0.1:8001", provider_url))
    return dest


def start_litellm(config: Path, port: int | None = None, master_key: str = MASTER_KEY) -> Service:
    port = port or free_port()
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        raise RuntimeError(f"{exe} missing: run `make install` (LiteLLM lives in its own venv)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_", "OPENAI_"))}
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": master_key,
                "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"})
    log = logdir() / f"litellm-{port}.log"
    proc = _spawn("litellm", [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                  env, log)
    svc = Service("litellm", proc, port, f"http://127.0.0.1:{port}", log)
    wait_until(lambda: _http_ok(f"{svc.url}/health/liveliness"), svc, 90)
    return svc


# ---------------------------------------------------------------- the gateway


def start_gateway(env: Mapping[str, str], port: int | None = None, workers: int = 1) -> Service:
    """`creditgate serve` with `env` (CREDITGATE_* variables) on a free port."""
    port = port or free_port()
    full = {**os.environ, **env, "CREDITGATE_HOST": "127.0.0.1", "CREDITGATE_PORT": str(port),
            "CREDITGATE_WORKERS": str(workers), "PYTHONPATH": str(ROOT)}
    log = logdir() / f"gateway-{port}.log"
    proc = _spawn("gateway", [sys.executable, "-m", "proxy.cli", "serve"], full, log, cwd=ROOT)
    svc = Service("gateway", proc, port, f"http://127.0.0.1:{port}", log)
    wait_until(lambda: _http_ok(f"{svc.url}/healthz"), svc, 30)
    return svc
