"""Start and stop the real services the gateway talks to, on free loopback ports.

Every service is a child process started here and stopped by PID (`Service.stop()`); nothing
listens on anything but 127.0.0.1. A service counts as ready only once its own process holds the
listening socket, so a stranger already on the port can never be mistaken for it. On Linux each
child also asks the kernel to signal it when the thread that started it exits
(`PR_SET_PDEATHSIG`), so a killed test run or `make run` leaves nothing behind.

Logs go to `logdir()` and scratch folders to `scratch()`, both under `run_dir()`: the checkout's
`.run/` (gitignored) unless CREDITGATE_RUN_DIR names another folder. Nothing is left in the system's
temporary directory (PostgreSQL's throwaway cluster lives there only while it runs).
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = Path(os.environ.get("CREDITGATE_LITELLM_VENV", ROOT / ".venv-litellm"))
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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
    stop_signal: int = signal.SIGTERM  # PostgreSQL: SIGINT (fast shutdown; SIGTERM waits for every client)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int | None = None, timeout: float = 10.0) -> None:
        """Signal the process group (`stop_signal` unless told), wait, SIGKILL after `timeout`; then clean up."""
        sig = self.stop_signal if sig is None else sig
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


@functools.cache
def _libc() -> ctypes.CDLL | None:
    return ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def die_with_parent(sig: int) -> None:
    """Ask the kernel to send `sig` to this process when its parent exits (Linux; elsewhere nothing).

    The parent is strictly the thread that forked us, and the setting is cleared when a process changes its
    user, so it is set after the user switch (`_spawn`'s `user`) and only for children of the main thread.
    If the parent has already gone by the time it is set, exit now rather than live on unwatched.
    """
    libc = _libc()
    if libc is None:
        return
    parent = os.getppid()
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)


def _spawn(name: str, argv: list[str], env: Mapping[str, str] | None, log: Path, cwd: Path | None = None,
           *, user: str | None = None, death_signal: int = signal.SIGTERM) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (stopped by process group), logging to `log`, as `user` if given.

    `death_signal` reaches the child if this (main) thread dies without stopping it: SIGTERM, or whatever
    stops that program cleanly.
    """
    _libc()  # loaded here, not in the forked child
    watched = threading.current_thread() is threading.main_thread()
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
            user=user, group=user, extra_groups=[] if user else None,
            preexec_fn=functools.partial(die_with_parent, death_signal) if watched else None,
        )


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP `port` (any address, IPv4 or IPv6), from the kernel's tables."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                found.add(fields[9])
    return found


def process_tree(pid: int) -> Iterator[int]:
    """`pid` and its descendants (a server may listen from a child process)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo = [pid]
    while todo:
        current = todo.pop()
        yield current
        todo.extend(children.get(current, []))


def owns_port(service: Service) -> bool:
    """Whether the service's own processes hold the socket listening on its port (always true off Linux)."""
    if sys.platform != "linux":
        return True
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(service.port)}
    for pid in process_tree(service.proc.pid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return True
            except OSError:
                continue
    return False


def wait_until(check: Callable[[], bool], service: Service, timeout: float) -> None:
    """Wait until `check()` passes and the service's own process holds its port; stop it on any failure."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not service.alive():
                raise RuntimeError(f"{service.name} exited early:\n{service.tail()}")
            try:
                if check() and owns_port(service):
                    return
            except Exception:  # noqa: BLE001 - not ready yet
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{service.name} not ready after {timeout}s:\n{service.tail()}")
    except BaseException:  # not ready, or interrupted (Ctrl-C) while waiting: nothing half-started stays
        service.stop()
        raise


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback only
        return bool(r.status == 200)


def _tcp_ok(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def run_dir() -> Path:
    """The folder for logs, scratch files and `make run`'s state: CREDITGATE_RUN_DIR, else `.run/` here."""
    d = Path(os.environ.get("CREDITGATE_RUN_DIR") or ROOT / ".run")
    d.mkdir(parents=True, exist_ok=True)
    return d


def logdir() -> Path:
    d = run_dir() / "logs"
    d.mkdir(exist_ok=True)
    return d


def scratch(prefix: str) -> Path:
    """A new empty folder under `run_dir()/scratch`; the caller removes it (or the test session's does)."""
    root = run_dir() / "scratch"
    root.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


# ---------------------------------------------------------------- PostgreSQL


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise RuntimeError(f"{name} not found: install PostgreSQL 15 (Debian package 'postgresql')")


def start_postgres(*, fsync: bool = False, extra: Mapping[str, str] | None = None, port: int | None = None,
                   workdir: Path | None = None) -> Service:
    """PostgreSQL on 127.0.0.1; as root it runs as the `postgres` user.

    Without `workdir`, a throwaway cluster in the system's temporary directory (reachable by the
    `postgres` user, unlike pytest's private one), removed by `stop()`. With `workdir`, the cluster in
    `workdir/data` is kept: made on first use, reused after (`make run`'s demo data).
    `fsync=False` is for tests (speed); benchmarks pass `fsync=True` and keep synchronous_commit on.
    The DSN is `Service.url` (user postgres, database postgres, trust auth on loopback).
    """
    port = port or free_port()
    user = "postgres" if os.geteuid() == 0 else None
    throwaway = workdir is None
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="creditgate-pg-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if user:
        shutil.chown(workdir, user, user)
        os.chmod(workdir, 0o700)
        if subprocess.run(["test", "-w", str(workdir)], user=user, group=user, extra_groups=[]).returncode != 0:
            raise RuntimeError(f"PostgreSQL runs as the postgres user, who cannot reach {workdir}: "
                               "set CREDITGATE_RUN_DIR to a folder every user can traverse")
    data = workdir / "data"
    log = logdir() / f"postgres-{port}.log"
    if not data.exists():  # made aside and renamed, so an interrupted initdb never leaves half a cluster
        partial = workdir / "data.partial"
        shutil.rmtree(partial, ignore_errors=True)
        made = subprocess.run(
            [_pg_bin("initdb"), "-D", str(partial), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=workdir, user=user, group=user,
            extra_groups=[] if user else None,
        )
        if made.returncode != 0:
            raise RuntimeError(f"initdb {data} failed:\n{made.stderr.decode(errors='replace')}")
        partial.rename(data)
    settings = {
        "listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": str(workdir),
        "fsync": "on" if fsync else "off", "full_page_writes": "on" if fsync else "off",
        "synchronous_commit": "on", "max_connections": "300", "shared_buffers": "256MB",
        "log_min_messages": "warning", "timezone": "UTC",
    }
    settings.update(extra or {})
    argv = [_pg_bin("postgres"), "-D", str(data)]
    for k, v in settings.items():
        argv += ["-c", f"{k}={v}"]
    # started directly as the postgres user (no runuser in between), so the death signal reaches the
    # postmaster itself: SIGINT, its fast shutdown
    proc = _spawn("postgres", argv, None, log, cwd=workdir, user=user, death_signal=signal.SIGINT)
    svc = Service("postgres", proc, port, f"postgresql://postgres@127.0.0.1:{port}/postgres", log, workdir,
                  stop_signal=signal.SIGINT)
    if throwaway:
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


def ensure_database(admin_url: str, name: str) -> tuple[str, bool]:
    """The DSN of database `name`, created if missing, and whether it already existed (kept data)."""
    import asyncio

    import asyncpg

    async def run() -> bool:
        conn = await asyncpg.connect(admin_url)
        try:
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                return True
            await conn.execute(f'CREATE DATABASE "{name}"')
            return False
        finally:
            await conn.close()

    existed = asyncio.run(run())
    return admin_url.rsplit("/", 1)[0] + f"/{name}", existed


# ---------------------------------------------------------------- Redis


def start_redis(port: int | None = None) -> Service:
    port = port or free_port()
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server not found: apt-get install -y redis-server")
    workdir = scratch("redis-")  # nothing is saved there (--save ""), but Redis wants a folder of its own
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
    return litellm_ready(launch_litellm(config, port, master_key))


def launch_litellm(config: Path, port: int | None = None, master_key: str = MASTER_KEY) -> Service:
    """LiteLLM's process, not ready yet: it takes seconds to boot, so start other things, then `litellm_ready`."""
    port = port or free_port()
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        raise RuntimeError(f"{exe} missing: run `make install` (LiteLLM lives in its own venv)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_", "OPENAI_"))}
    tmp = scratch("litellm-")  # its temporary files go when it stops
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": master_key,
                "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True", "TMPDIR": str(tmp)})
    log = logdir() / f"litellm-{port}.log"
    proc = _spawn("litellm", [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                  env, log)
    svc = Service("litellm", proc, port, f"http://127.0.0.1:{port}", log, tmp)
    svc.cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    return svc


def litellm_ready(svc: Service) -> Service:
    wait_until(lambda: _http_ok(f"{svc.url}/health/liveliness"), svc, 90)
    return svc


# ---------------------------------------------------------------- Prometheus


def start_prometheus(targets: Sequence[str], *, rule_files: Sequence[Path] = (), job: str = "creditgate",
                     interval: str = "1s") -> Service:
    """A real Prometheus (Debian's `prometheus` package) on a free loopback port, scraping `targets`
    (`host:port`) every `interval` as `job`, with its own storage folder, removed by `stop()`."""
    binary = shutil.which("prometheus")
    if not binary:
        raise RuntimeError("prometheus not found: scripts/install-system.sh installs Debian's prometheus package")
    home = scratch("prometheus-")
    config = {"global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
              "rule_files": [str(f) for f in rule_files],
              "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}]}
    (home / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log = logdir() / f"prometheus-{port}.log"
    proc = _spawn("prometheus", [binary, f"--config.file={home / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={home / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                  None, log)
    svc = Service("prometheus", proc, port, f"http://127.0.0.1:{port}", log, home)
    svc.cleanup.append(lambda: shutil.rmtree(home, ignore_errors=True))
    wait_until(lambda: _http_ok(f"{svc.url}/-/ready"), svc, 60)
    return svc


# ---------------------------------------------------------------- the gateway


def start_gateway(env: Mapping[str, str], port: int | None = None, workers: int = 1) -> Service:
    """`creditgate serve` with `env` (CREDITGATE_* variables) on a free port."""
    port = port or free_port()
    tmp = scratch("gateway-")  # its temporary files (the workers' metrics folder) go when it stops, even if killed
    # the settlement spool outlives the process (a restart replays what a killed one left): under run_dir(),
    # never the checkout, unless `env` names one
    full = {"CREDITGATE_SPOOL_DIR": str(run_dir() / "spool"), **os.environ, **env,
            "CREDITGATE_HOST": "127.0.0.1", "CREDITGATE_PORT": str(port),
            "CREDITGATE_WORKERS": str(workers), "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)}
    log = logdir() / f"gateway-{port}.log"
    proc = _spawn("gateway", [sys.executable, "-m", "proxy.cli", "serve"], full, log, cwd=ROOT)
    svc = Service("gateway", proc, port, f"http://127.0.0.1:{port}", log, tmp)
    svc.cleanup.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    wait_until(lambda: _http_ok(f"{svc.url}/healthz"), svc, 30)
    return svc
