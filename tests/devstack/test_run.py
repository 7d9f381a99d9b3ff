"""`python -m devstack run` (what `make run` runs) through real processes on 127.0.0.1.

A taken port is refused before anything starts; however the run ends (SIGHUP, SIGTERM, SIGINT, its parent
killed outright) every process it started is gone; a second run reuses the demo data and its printed key
works; `--fresh` (`make run FRESH=1`) starts over. Each test has its own run folder (CREDITGATE_RUN_DIR)
and its own ports, so none touches the checkout's `.run/` or the default ports.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devstack import services
from devstack.ports import PORTS, Port

ROOT = services.ROOT
START = 240.0  # seconds to the banner: LiteLLM alone boots for seconds, far longer on a loaded machine
STOP = 90.0  # seconds for every process to be gone (each service's stop is bounded at 15 s)
# what every complete run must have started (so "all gone" cannot pass on an empty list)
EXPECTED = ("postgres -D", "redis-server", "bin/litellm", "devstack.fake_provider", "proxy.cli serve")
# an intermediate parent that we SIGKILL: nothing of its own cleans up
PARENT = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


@pytest.fixture
def home() -> Iterator[Path]:
    """This test's run folder, in the system's temporary directory rather than pytest's: run as root,
    PostgreSQL is the postgres user, who cannot enter pytest's private folder. Removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="creditgate-devstack-test-"))
    path.chmod(0o711)  # mkdtemp's 0700 would keep the postgres user out too
    yield path
    shutil.rmtree(path, ignore_errors=True)


def free_ports() -> dict[str, str]:
    return {spec.variable: str(services.free_port()) for spec in PORTS}


def start_time(pid: int) -> str | None:
    """The process's start time (telling it from a later process with the same pid), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Processes:
    """A run's process tree as seen at one moment: pid -> (start time, command line)."""

    seen: dict[int, tuple[str, str]]

    @classmethod
    def of(cls, pid: int) -> Processes:
        seen = {}
        for p in services.process_tree(pid):
            started = start_time(p)
            if started is not None:
                seen[p] = (started, cmdline(p))
        return cls(seen)

    def alive(self) -> list[str]:
        return [command for pid, (started, command) in self.seen.items() if start_time(pid) == started]

    def wait_gone(self, timeout: float = STOP) -> list[str]:
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.alive()

    def kill(self) -> None:
        """Clean-up after a failed test: SIGKILL what is still alive, by pid, checked against its start time."""
        for pid, (started, _) in self.seen.items():
            if start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


class Run:
    """One `python -m devstack run`, its output in a file, optionally under an intermediate parent."""

    def __init__(self, home: Path, out: Path, env: dict[str, str], *args: str, parent: bool = False) -> None:
        self.out = out
        argv = [sys.executable, "-m", "devstack", "run", *args]
        with open(self.out, "wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", PARENT, *argv] if parent else argv, stdout=sink, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=ROOT,
                env={**os.environ, **env, "CREDITGATE_RUN_DIR": str(home), "PYTHONPATH": str(ROOT)})
        self.parent = parent
        self.tree = Processes({})

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def devstack_pid(self) -> int | None:
        if not self.parent:
            return int(self.proc.pid)
        children = [p for p in services.process_tree(self.proc.pid) if p != self.proc.pid]
        return children[0] if children else None

    def wait_for(self, marker: str, timeout: float = START) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if marker in text:
                return text
            assert self.proc.poll() is None, f"devstack exited ({self.proc.returncode}) before {marker!r}:\n{text}"
            time.sleep(0.2)
        raise AssertionError(f"no {marker!r} after {timeout}s:\n{self.text()}")

    def banner(self) -> str:
        """Wait for the banner; then note every process the run started (all must be there)."""
        text = self.wait_for("\nStop: Ctrl-C")
        pid = self.devstack_pid()
        assert pid is not None
        self.tree = Processes.of(pid)
        commands = " | ".join(command for _, command in self.tree.seen.values())
        assert [name for name in EXPECTED if name not in commands] == [], commands
        return text

    def stop(self) -> None:
        """Teardown: whatever a failed test left running goes."""
        self.tree.kill()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.stop()


def key_of(banner: str) -> str:
    found = re.search(r"^API key:\s+(\S+)", banner, re.MULTILINE)
    assert found, banner
    return found.group(1)


def credits(env: dict[str, str], key: str) -> httpx.Response:
    """The banner's `curl .../v1/credits`, as the member."""
    return httpx.get(f"http://127.0.0.1:{env['CREDITGATE_PORT']}/v1/credits",
                     headers={"authorization": f"Bearer {key}"}, timeout=30)


# ---------------------------------------------------------------- refused before anything starts


@pytest.mark.parametrize("spec", PORTS, ids=[spec.variable for spec in PORTS])
def test_a_taken_port_is_refused_with_its_variable_before_anything_starts(spec: Port, home: Path) -> None:
    variable, service = spec.variable, spec.service
    env = free_ports()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken.setblocking(False)
        port = taken.getsockname()[1]
        env[variable] = str(port)
        done = subprocess.run([sys.executable, "-m", "devstack", "run"], capture_output=True, text=True, timeout=120,
                              cwd=ROOT, env={**os.environ, **env, "CREDITGATE_RUN_DIR": str(home / "run"),
                                             "PYTHONPATH": str(ROOT)})
        with pytest.raises(BlockingIOError):
            taken.accept()  # nobody knocked: nothing was started or seeded against it
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert re.fullmatch(rf"creditgate: port {port} \({re.escape(service)}\) is taken; set {variable}=\.\.\. "
                        rf"\(make run {variable}=\d+\)", lines[0]), lines[0]
    suggested = int(lines[0].rsplit("=", 1)[1].rstrip(")"))
    assert suggested > port and str(suggested) not in env.values()
    assert not (home / "run").exists()  # not even the run folder was made


def test_bad_and_duplicate_port_variables_are_one_line_each(home: Path) -> None:
    env = free_ports()
    env["CREDITGATE_LITELLM_PORT"] = "http"
    env["CREDITGATE_REDIS_PORT"] = env["CREDITGATE_POSTGRES_PORT"]
    done = subprocess.run([sys.executable, "-m", "devstack", "run"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, **env, "CREDITGATE_RUN_DIR": str(home / "run"),
                                         "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "creditgate: CREDITGATE_LITELLM_PORT='http' is not a port (1-65535); set CREDITGATE_LITELLM_PORT to a free "
        "port (default 4000)",
        f"creditgate: port {env['CREDITGATE_POSTGRES_PORT']} is set twice, CREDITGATE_POSTGRES_PORT (PostgreSQL) and "
        "CREDITGATE_REDIS_PORT (Redis); set one of them to another port",
    ]
    assert not (home / "run").exists()


def test_make_run_passes_its_variables_and_fresh(home: Path) -> None:
    """The Makefile's run target: FRESH=1 becomes --fresh, the command is one plain line (make runs it without
    a shell, so make's signals reach devstack), and port variables reach devstack. `-o install` keeps make
    from installing anything."""
    outer = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    for fresh, command in (("1", ".venv/bin/python -m devstack run --fresh"),
                           ("0", ".venv/bin/python -m devstack run")):
        dry = subprocess.run(["make", "-n", "-o", "install", "run", f"FRESH={fresh}"], capture_output=True,
                             text=True, cwd=ROOT, timeout=60, env=outer)
        assert [line.rstrip() for line in dry.stdout.splitlines()] == [command]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(["make", "-s", "-o", "install", "run", f"CREDITGATE_PORT={port}",
                               f"CREDITGATE_RUN_DIR={home / 'run'}"], capture_output=True, text=True, cwd=ROOT,
                              timeout=120, env=outer)
    assert done.returncode != 0
    assert f"creditgate: port {port} (gateway) is taken; set CREDITGATE_PORT=... (make run CREDITGATE_PORT=" \
        in done.stderr


# ---------------------------------------------------------------- however it ends, nothing is left


def test_ctrl_c_while_starting_stops_what_had_started(home: Path, tmp_path: Path, runs: list[Run]) -> None:
    env = free_ports()
    runs.append(run := Run(home, tmp_path / "run.out", env))
    deadline = time.monotonic() + START
    while True:  # LiteLLM is launched first; wait until PostgreSQL runs too
        run.tree = tree = Processes.of(run.proc.pid)
        if any("postgres -D" in command for _, command in tree.seen.values()):
            break
        assert run.proc.poll() is None, run.text()
        assert time.monotonic() < deadline, run.text()
        time.sleep(0.05)
    assert any("bin/litellm" in command for _, command in tree.seen.values())
    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(STOP) == 0, run.text()
    assert tree.wait_gone() == []
    assert "SIGINT received: stopping everything ...\nstopped." in run.text()
    assert not (home / "demo.json").exists()


@pytest.mark.slow
def test_demo_data_is_kept_across_runs_and_every_ending_stops_everything(home: Path, tmp_path: Path,
                                                                         runs: list[Run]) -> None:
    env = free_ports()

    # a first run seeds; closing its terminal (SIGHUP) stops everything it started
    runs.append(first := Run(home, tmp_path / "first.out", env))
    banner = first.banner()
    assert f"Demo data: fresh demo data, kept in {home} for the next run.\n" in banner
    assert "Demo org org_" in banner and ": 1,000,000,000 millicredits available in its pool." in banner
    assert "Member demo@example.com (org admin): 500,000,000 of 500,000,000 millicredits left this month." in banner
    assert re.findall(r"(?<![/\w])credits", banner) == []  # millicredits, as every API and header says
    for variable, port in env.items():
        assert f"{variable}={port} " in banner
    key = key_of(banner)
    assert (home / "demo.json").stat().st_mode & 0o777 == 0o600
    assert key in (home / "demo.json").read_text()
    answer = credits(env, key)
    assert answer.status_code == 200
    assert answer.json()["pool"] == {"balance": 1_000_000_000, "held": 0, "available": 1_000_000_000}
    first.proc.send_signal(signal.SIGHUP)
    assert first.proc.wait(STOP) == 0, first.text()
    assert first.tree.wait_gone() == []
    assert "SIGHUP received: stopping everything ...\nstopped." in first.text()

    # a second run reuses the data and prints the same key, which works; SIGTERM stops everything
    runs.append(second := Run(home, tmp_path / "second.out", env))
    banner = second.banner()
    assert f"Demo data: reusing demo data from {home}; `make run FRESH=1` starts over.\n" in banner
    assert key_of(banner) == key
    assert credits(env, key).status_code == 200
    assert (home / "logs.previous").is_dir() and (home / "logs").is_dir()
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(STOP) == 0, second.text()
    assert second.tree.wait_gone() == []

    # --fresh (make run FRESH=1) starts over: a new key, the old one refused; the run's parent killed
    # outright (SIGKILL, nothing of its own cleans up) still stops everything
    runs.append(third := Run(home, tmp_path / "third.out", env, "--fresh", parent=True))
    banner = third.banner()
    assert f"Demo data: fresh demo data, kept in {home} for the next run.\n" in banner
    fresh_key = key_of(banner)
    assert fresh_key != key
    assert credits(env, key).status_code == 401
    answer = credits(env, fresh_key)
    assert answer.status_code == 200
    assert answer.json()["pool"]["available"] == 1_000_000_000
    third.proc.kill()
    third.proc.wait(30)
    assert third.tree.wait_gone() == []
    assert "SIGTERM received: stopping everything ...\nstopped." in third.text()


@pytest.mark.slow
def test_closing_the_terminal_that_runs_make_run_stops_everything(home: Path) -> None:
    """`make run` as the terminal's session leader (`exec make run`, a terminal or IDE running it directly):
    closing the terminal signals make alone, and make waits for its child rather than passing SIGHUP on;
    devstack notices the hang-up itself."""
    env = free_ports()
    outer = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    master, terminal = os.openpty()
    make = subprocess.Popen(
        ["make", "-s", "-o", "install", "run"], stdin=terminal, stdout=terminal, stderr=terminal, cwd=ROOT,
        env={**outer, **env, "CREDITGATE_RUN_DIR": str(home)}, start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))  # the terminal becomes make's, as a shell's would
    os.close(terminal)
    tree = Processes({})
    try:
        seen = b""
        deadline = time.monotonic() + START
        while b"\nStop: Ctrl-C" not in seen.replace(b"\r\n", b"\n"):
            assert time.monotonic() < deadline and make.poll() is None, seen.decode(errors="replace")
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 65536)
        tree = Processes.of(make.pid)
        commands = " | ".join(command for _, command in tree.seen.values())
        assert [name for name in EXPECTED if name not in commands] == [], commands
        os.close(master)  # the terminal closes
        master = -1
        assert tree.wait_gone() == []
        assert make.wait(30) != 0
    finally:
        if master >= 0:
            os.close(master)
        tree.kill()
        if make.poll() is None:
            make.kill()
            make.wait(30)
