"""devstack/services.py: a service is ready only when its own process holds its port (a stranger answering
there is never mistaken for it), and its processes die with the thread that started them."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import services


class Stranger(http.server.BaseHTTPRequestHandler):
    """Another program on the port that answers every GET with 200, as another gateway's /healthz would."""

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stranger() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stranger)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_a_stranger_answering_on_the_port_is_never_taken_for_the_service(stranger: int) -> None:
    with pytest.raises(RuntimeError, match=r"^fake-provider exited early:") as caught:
        services.start_fake_provider(port=stranger)
    assert "address already in use" in str(caught.value).lower()


def test_a_free_port_is_held_by_the_service_itself() -> None:
    svc = services.start_fake_provider()
    try:
        assert services.owns_port(svc) is True
    finally:
        svc.stop()
    assert services.owns_port(svc) is False


STARTER = """
import os, sys
os.environ["CREDITGATE_RUN_DIR"] = sys.argv[1]
from devstack import services
redis = services.start_redis()
print(redis.proc.pid, flush=True)
sys.stdin.read()  # until killed
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_service_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, cwd=services.ROOT,
                               env={**os.environ, "PYTHONPATH": str(services.ROOT)})
    assert starter.stdout is not None
    redis_pid = int(starter.stdout.readline())
    try:
        assert alive(redis_pid)
        starter.kill()  # SIGKILL: no clean-up of its own runs
        starter.wait(30)
        deadline = time.monotonic() + 30
        while alive(redis_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(redis_pid)
    finally:
        if alive(redis_pid):
            os.kill(redis_pid, signal.SIGKILL)
