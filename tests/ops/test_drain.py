"""The drain on SIGTERM: not ready at once, new requests served through the grace and refused after it,
requests in flight finished or cut at the deadline, then the server stopped, exactly once.

The state machine runs in-process with short times; the signal plumbing runs in a real uvicorn (one
worker, then two behind uvicorn's parent, which forwards the signal) with a tiny app that uses the drain as
the passthrough does (tests/e2e/test_sigterm.py runs the whole product)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devstack import services
from proxy.errors import ProxyError
from proxy.ops.drain import Drain, shutting_down
from proxy.ops.health import NotReady
from tests.waiting import until

ROOT = Path(__file__).resolve().parents[2]
GRACE, DEADLINE = 2.0, 4.5  # a real uvicorn's: the work of 1.5 s finishes in time, the work of 60 s is cut
REFUSED = {"error": {"message": "This gateway replica is shutting down; retry the request.",
                     "type": "service_unavailable", "param": None, "code": "shutting_down"}}


class Stopped:
    """The `stop` callback: records when the drain stopped the server."""

    def __init__(self) -> None:
        self.at: list[float] = []

    def __call__(self) -> None:
        self.at.append(time.monotonic())


async def served(drain: Drain, seconds: float) -> str:
    """One model request as the passthrough runs it: tracked whole, its wait on LiteLLM cuttable."""
    if drain.refusing:
        return drain.refuse().code or ""
    with drain.track():
        try:
            async with drain.cuttable():
                await asyncio.sleep(seconds)
        except ProxyError as err:
            return err.code or ""
        return "ok"


def test_the_refusal_is_the_contracts_503() -> None:
    err = shutting_down()
    assert (err.status, err.body(), err.headers) == (503, REFUSED, {"retry-after": "1", "connection": "close"})


async def test_not_ready_at_once_served_through_the_grace_then_refused() -> None:
    stopped = Stopped()
    drain = Drain(grace=0.3, deadline=5.0, stop=stopped)
    assert await drain.draining() is None
    open_one = asyncio.ensure_future(served(drain, 0.6))
    await until(lambda: drain.in_flight == 1)
    began = time.monotonic()
    drain.begin(signal.SIGTERM)
    with pytest.raises(NotReady, match="shutting down"):
        await drain.draining()
    assert drain.active and not drain.refusing
    assert await served(drain, 0.0) == "ok"  # the load balancer has not noticed yet: still served
    await until(lambda: drain.refusing)
    assert 0.25 <= time.monotonic() - began < 1.0
    assert await served(drain, 0.0) == "shutting_down"
    assert await open_one == "ok"  # finished within the deadline
    await until(lambda: stopped.at)
    assert 0.5 <= stopped.at[0] - began < 1.5  # stopped when the last request ended, not at the deadline
    assert drain.stats == {"finished": 2, "cut": 0, "refused": 1}
    assert drain.seconds is not None and drain.seconds < 1.5


async def test_the_deadline_cuts_the_waits_on_litellm_and_refuses_the_next_at_once() -> None:
    stopped = Stopped()
    drain = Drain(grace=0.0, deadline=0.4, stop=stopped)
    long_ones = [asyncio.ensure_future(served(drain, 30)) for _ in range(3)]
    await until(lambda: drain.in_flight == 3)
    began = time.monotonic()
    drain.begin(signal.SIGTERM)
    assert await asyncio.gather(*long_ones) == ["shutting_down"] * 3
    assert 0.35 <= time.monotonic() - began < 2.0
    await until(lambda: stopped.at)
    assert drain.stats == {"finished": 3, "cut": 3, "refused": 0}
    with pytest.raises(ProxyError) as late:  # past the cut, a request that reaches the upstream hop
        async with drain.cuttable():
            pass
    assert late.value.code == "shutting_down"


async def test_a_timeout_inside_is_not_a_cut() -> None:
    drain = Drain(grace=0.0, deadline=10.0, stop=Stopped())
    with pytest.raises(TimeoutError):
        async with drain.cuttable():
            async with asyncio.timeout(0.01):  # the upstream's own read timeout: upstream_timeout, not ours
                await asyncio.sleep(1)
    assert drain.stats["cut"] == 0


async def test_settlements_that_outlast_the_cut_get_a_bounded_wait() -> None:
    stopped = Stopped()
    drain = Drain(grace=0.0, deadline=0.1, settle_seconds=0.3, stop=stopped)

    async def slow_settlement() -> None:
        with drain.track():
            await asyncio.sleep(5)  # not cuttable: a settle the ledger is slow to take

    task = asyncio.ensure_future(slow_settlement())
    await until(lambda: drain.in_flight == 1)
    began = time.monotonic()
    drain.begin(signal.SIGTERM)
    await until(lambda: stopped.at)
    assert 0.35 <= stopped.at[0] - began < 1.5  # deadline, then the settle bound: the process must end
    assert drain.in_flight == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_sigint_skips_the_grace_and_a_second_one_cuts_now() -> None:
    stopped = Stopped()
    drain = Drain(grace=10.0, deadline=20.0, stop=stopped)
    long_one = asyncio.ensure_future(served(drain, 30))
    await until(lambda: drain.in_flight == 1)
    drain.begin(signal.SIGINT)
    await until(lambda: drain.refusing, 1.0)  # no grace for a terminal
    drain.begin(signal.SIGTERM)  # a repeated signal (the process group, then uvicorn's parent) changes nothing
    await asyncio.sleep(0.1)
    assert not long_one.done()
    drain.begin(signal.SIGINT)
    assert await asyncio.wait_for(long_one, 1.0) == "shutting_down"
    await until(lambda: stopped.at, 1.0)
    assert len(stopped.at) == 1


async def test_close_gives_the_signals_back_and_stops_a_drain_still_running() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    idle = Drain(grace=10.0, deadline=20.0, stop=Stopped())
    await idle.open()  # pytest runs tests in the main thread: the handlers are taken over
    assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGINT) == idle._on_signal
    await idle.close()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    stopped = Stopped()
    draining = Drain(grace=10.0, deadline=20.0, stop=stopped)
    await draining.open()
    try:
        draining.begin(signal.SIGTERM)
        await draining.close()  # the server stopped for another reason: the drain stops too
        await asyncio.sleep(0.05)
        assert stopped.at == []
        # a late SIGTERM while the server shuts down is ignored; Ctrl-C goes back to uvicorn (a second one forces)
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == (signal.SIG_IGN, before[1])
    finally:
        signal.signal(signal.SIGTERM, before[0])


async def test_outside_uvicorn_the_signal_is_handed_back_once_drained() -> None:
    received: list[int] = []
    before = signal.signal(signal.SIGTERM, lambda signum, _: received.append(signum))
    try:
        drain = Drain(grace=0.0, deadline=5.0)
        await drain.open()
        signal.raise_signal(signal.SIGTERM)  # reaches the drain, not the handler it replaced
        await until(lambda: received)  # nothing in flight: drained at once, then the signal is raised again
        assert received == [signal.SIGTERM] and drain.active and drain.seconds is not None
        await drain.close()
    finally:
        signal.signal(signal.SIGTERM, before)


# ---------------------------------------------------------------- in a real uvicorn


def say(line: str) -> None:
    """One line in one write: the workers share the parent's output file, and print's two writes (the text,
    then the newline) of two workers closing at once interleaved into one line."""
    os.write(1, f"{line}\n".encode())


def demo_app() -> Starlette:
    """A tiny app served by uvicorn in a subprocess (`uvicorn.run(..., factory=True)`), using the drain as the
    passthrough does; its lifespan's end prints how many requests were still in flight."""
    drain = Drain(grace=float(os.environ["DEMO_GRACE"]), deadline=float(os.environ["DEMO_DEADLINE"]))

    async def work(request: Request) -> Response:
        if drain.refusing:
            return drain.refuse().to_response()
        with drain.track():
            try:
                async with drain.cuttable():
                    await asyncio.sleep(float(request.query_params["seconds"]))
            except ProxyError as err:
                return err.to_response()
        return JSONResponse({"pid": os.getpid()})

    async def ready(_: Request) -> Response:
        try:
            await drain.draining()
        except NotReady:
            return JSONResponse({"draining": True}, status_code=503)
        return JSONResponse({"draining": False})

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await drain.open()
        say(f"lifespan open: {os.getpid()}")
        yield
        await drain.close()
        say(f"lifespan closed: {drain.in_flight} in flight, stats {drain.stats}")

    return Starlette(routes=[Route("/work", work, methods=["POST"]), Route("/ready", ready)], lifespan=lifespan)


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_in_a_real_uvicorn_drains_and_exits_0(workers: int, tmp_path: Path) -> None:
    port = services.free_port()
    code = ("import uvicorn; uvicorn.run('tests.ops.test_drain:demo_app', factory=True, host='127.0.0.1', "
            f"port={port}, workers={workers}, loop='uvloop', http='httptools', lifespan='on', log_config=None, "
            "timeout_graceful_shutdown=3)")
    out = tmp_path / "out.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DEMO_GRACE": str(GRACE), "DEMO_DEADLINE": str(DEADLINE)}
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=sink, stderr=subprocess.STDOUT,
                                cwd=ROOT, start_new_session=True)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 30
            while out.read_text().count("lifespan open") < workers:  # every worker serving
                assert time.monotonic() < deadline and proc.poll() is None, out.read_text()
                await asyncio.sleep(0.1)
            n = 2 * workers
            short = [asyncio.ensure_future(client.post("/work?seconds=1.5")) for _ in range(n)]
            long = [asyncio.ensure_future(client.post("/work?seconds=60")) for _ in range(n)]
            await asyncio.sleep(0.3)
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)  # the parent only, as Kubernetes does; uvicorn's parent forwards it
            async def unready() -> bool:
                return [(await client.get("/ready")).status_code for _ in range(4)] == [503] * 4

            # uvicorn's parent looks at its signals every 0.5 s: every worker unready within a second or so
            await until(unready, GRACE - 0.5, "every worker unready after SIGTERM", every=0.05)
            assert (await client.post("/work?seconds=0")).status_code == 200  # within the grace: still served
            # past the grace of every worker (each began it within 0.5 s of the signal), well before the deadline
            await asyncio.sleep(began + GRACE + 1.0 - time.monotonic())
            refused = await client.post("/work?seconds=0")
            assert (refused.status_code, refused.json()) == (503, REFUSED)
            assert refused.headers["connection"] == "close" and refused.headers["retry-after"] == "1"
            assert [r.status_code for r in await asyncio.gather(*short)] == [200] * n  # finished in time
            cut = await asyncio.gather(*long)
            assert [(r.status_code, r.json()) for r in cut] == [(503, REFUSED)] * n  # cut at the deadline
        while proc.poll() is None and time.monotonic() - began < 15:
            await asyncio.sleep(0.05)
        took = time.monotonic() - began
        assert proc.returncode == 0, out.read_text()
        assert DEADLINE <= took < DEADLINE + 7.5
        closed = [line for line in out.read_text().splitlines() if line.startswith("lifespan closed")]
        assert len(closed) == workers, out.read_text()
        assert all(line.startswith("lifespan closed: 0 in flight") for line in closed)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
