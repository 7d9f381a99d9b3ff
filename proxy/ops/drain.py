"""Graceful shutdown for rolling restarts: on SIGTERM the replica drains, settles everything, exits 0.

Kubernetes sends SIGTERM, keeps routing new connections to the pod until its endpoints are updated (a few
seconds), and kills it `terminationGracePeriodSeconds` (default 30 s) after the signal. From the signal on:

1. `/readyz` is 503 at once (its `draining` check fails), so the load balancer stops routing here;
2. for `grace` seconds (CREDITGATE_UNREADY_GRACE_SECONDS, default 5) new model requests are still served:
   the ones sent before the load balancer noticed. Every answer now carries `Connection: close`, so clients
   on kept-alive connections reconnect, to another replica, for their next request;
3. after that, new model requests get 503 `shutting_down` with `Retry-After: 1` and `Connection: close`
   (the OpenAI SDKs retry a 503, on a new connection);
4. requests in flight run to their end. `deadline` seconds after the signal (CREDITGATE_DRAIN_SECONDS,
   default 25, below Kubernetes' 30) whatever still waits on LiteLLM is cut: a stream ends with the final
   `data: {"error": ...}` event (no `[DONE]`) and is settled `estimate` (its prompt plus what was streamed);
   a non-stream request gets 503 `shutting_down` and its hold is voided (nothing was served);
5. once every admitted request has settled (at most `settle_seconds` after a cut), uvicorn is told to stop:
   it closes the listener and the idle connections, then the app's lifespan closes the ledger and the pool.
   The process exits 0.

SIGINT (Ctrl-C) drains the same way without the grace (nothing routes to a terminal); a second SIGINT cuts
at once. A repeated SIGTERM (a signalled process group, plus uvicorn's parent forwarding it to its workers
when CREDITGATE_WORKERS > 1) changes nothing: each worker drains itself once.

uvicorn's own handling of SIGTERM would stop accepting at once, cancel open requests at
`timeout_graceful_shutdown` without a final event, and re-raise the signal once shut down (exit status
143). So the drain takes over both signals while the app runs (`open()`, from the lifespan, which uvicorn
starts after installing its handlers) and hands the stop back to uvicorn's `Server` (`should_exit`, what
its handler sets) when it is done.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import FrameType
from typing import Any

from proxy.errors import ProxyError
from proxy.ops.health import NotReady
from proxy.tasks import cancel, wait_event

log = logging.getLogger("creditgate.drain")
SIGNALS = (signal.SIGTERM, signal.SIGINT)
SETTLE_SECONDS = 3.0  # after a cut: how long settlements may still take before the process stops anyway

Handler = Callable[[int, FrameType | None], Any] | int | None


def shutting_down() -> ProxyError:
    """The answer to a model request this replica will not serve any more (CONTRACT.md's 503 row)."""
    return ProxyError(503, "service_unavailable", "shutting_down",
                      "This gateway replica is shutting down; retry the request.",
                      headers={"retry-after": "1", "connection": "close"})


class Drain:
    """The replica's shutdown state and the count of model requests in flight (a `Part` of the app)."""

    def __init__(self, *, grace: float, deadline: float, settle_seconds: float = SETTLE_SECONDS,
                 stop: Callable[[], None] | None = None) -> None:
        self.grace, self.deadline, self.settle_seconds = grace, deadline, settle_seconds
        self._stop = stop  # tests pass one; else uvicorn's, found when the signal handlers are taken over
        self._previous: dict[int, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # set when the last request in flight ends, or on a forced cut
        self._forced = False
        self._cut = False
        self._scopes: set[asyncio.Timeout] = set()
        self.active = False  # draining: not ready, answers close their connection
        self.refusing = False  # past the grace: new model requests are refused
        self.in_flight = 0
        # model requests since the drain began: ended (served to the end or cut), cut, refused
        self.stats = {"finished": 0, "cut": 0, "refused": 0}
        self.seconds: float | None = None  # how long the drain took, once done

    # ------------------------------------------------------------------ a Part of the app

    async def open(self) -> None:
        """Take over SIGTERM and SIGINT (only the main thread may; a server in a thread keeps its own)."""
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        if self._stop is None:
            self._stop = _server_stop(self._previous[signal.SIGTERM])

    async def close(self) -> None:
        """Give the signals back and stop a drain still running (the server stopped for another reason). Once
        drained, a late SIGTERM (a process group signalled, then uvicorn's parent forwarding it) is ignored
        while the server shuts down: given back to uvicorn, it would be raised again at exit (status 143)."""
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:
                late = self.active and sig == signal.SIGTERM
                signal.signal(sig, signal.SIG_IGN if late else _installable(handler))
        self._previous.clear()
        task, self._task = self._task, None
        await cancel(task)

    # ------------------------------------------------------------------ the signal

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        """Runs in the main thread between two steps of the loop: hand over to the loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.begin, signum)

    def begin(self, signum: int = signal.SIGTERM) -> None:
        """Start draining (once); a second SIGINT cuts what is still open now."""
        if self.active:
            if signum == signal.SIGINT:
                log.warning("second interrupt: cutting the requests still open now")
                self._forced = True
                self._wake.set()
            return
        self.active = True
        grace = self.grace if signum == signal.SIGTERM else 0.0
        log.warning("draining: not ready from now on", extra={
            "signal": signal.Signals(signum).name, "in_flight": self.in_flight, "grace_seconds": grace,
            "deadline_seconds": self.deadline})
        self._task = asyncio.get_running_loop().create_task(self._run(grace), name="creditgate-drain")

    async def _run(self, grace: float) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await self._wait(began + grace, idle=False)
        self.refusing = True
        await self._wait(began + self.deadline, idle=True)
        if self.in_flight:
            self._cut_all()
            await self._wait(loop.time() + self.settle_seconds, idle=True)
        self.seconds = round(loop.time() - began, 3)
        log.warning("drained: stopping the server", extra={
            "seconds": self.seconds, **self.stats, "unsettled": self.in_flight})
        if self._stop is not None:
            self._stop()

    async def _wait(self, until: float, *, idle: bool) -> None:
        """Until the loop's clock reaches `until`, or (with `idle`) nothing is in flight any more, or a second
        interrupt asks for the cut (while there is none yet)."""
        loop = asyncio.get_running_loop()
        while not (idle and self.in_flight == 0) and not (self._forced and not self._cut):
            left = until - loop.time()
            if left <= 0:
                return
            self._wake.clear()
            await wait_event(self._wake, left)

    def _cut_all(self) -> None:
        """End every wait on LiteLLM now (`cuttable`); later ones are refused on entry."""
        self._cut = True
        now = asyncio.get_running_loop().time()
        for scope in self._scopes:
            scope.reschedule(now)

    # ------------------------------------------------------------------ what the app uses

    async def draining(self) -> str | None:
        """The /readyz check: fails from the signal on, so the load balancer stops routing here."""
        if self.active:
            raise NotReady("shutting down: finishing the requests in flight")
        return None

    @contextmanager
    def track(self) -> Iterator[None]:
        """Around one whole model request, its settlement included: the drain waits for it."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.active:
                self.stats["finished"] += 1
            if self.in_flight == 0:
                self._wake.set()

    def refuse(self) -> ProxyError:
        """Count a refused request; the error to answer it with."""
        self.stats["refused"] += 1
        return shutting_down()

    @asynccontextmanager
    async def cuttable(self) -> AsyncIterator[None]:
        """Around the wait on LiteLLM: the drain's deadline ends it with ProxyError `shutting_down` (raised
        at once when the deadline has passed already). The caller renders it: a final event when the
        stream has started, else the 503."""
        if self._cut:
            raise shutting_down()
        scope = asyncio.timeout(None)
        try:
            async with scope:
                self._scopes.add(scope)
                try:
                    yield
                finally:
                    self._scopes.discard(scope)
        except TimeoutError:
            if not scope.expired():
                raise
            self.stats["cut"] += 1
            raise shutting_down() from None


def _server_stop(previous: Handler) -> Callable[[], None]:
    """How to stop the server whose SIGTERM handler the drain replaced. uvicorn's `Server.handle_exit` sets
    `should_exit`, which its main loop polls: setting it ourselves leaves no signal to re-raise once shut
    down, so the process exits 0. Under anything else the signal is handed back and raised again."""
    server = getattr(previous, "__self__", None)
    if server is not None and hasattr(server, "should_exit"):

        def stop() -> None:
            server.should_exit = True

        return stop

    def hand_back() -> None:
        signal.signal(signal.SIGTERM, _installable(previous))
        signal.raise_signal(signal.SIGTERM)

    return hand_back


def _installable(handler: Handler) -> Callable[[int, FrameType | None], Any] | int:
    """`signal.getsignal` says None for a handler not installed from Python; the default is what stands."""
    return signal.SIG_DFL if handler is None else handler
