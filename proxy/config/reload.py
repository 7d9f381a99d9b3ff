"""Reloading the configuration without a restart: SIGHUP, a changed file, LiteLLM's model info.

`Reloader` (a `Part` of the app: opened by the lifespan) owns every swap of the `LiveConfig`:

- **SIGHUP** (each worker gets its own: `creditgate serve` forwards the signal to its workers) and, with
  `poll_seconds`, a watched file whose mtime, size or inode changed (a Kubernetes ConfigMap update swaps a
  symlink) re-read the LiteLLM config and the policy file with `load`, which checks them exactly as
  start-up does. A bad file is refused: one error line per problem, the old snapshot keeps serving and
  `on_reload("failed")` counts it. A good one is swapped in at once and logged with its price version.
- **Model info.** LiteLLM may start after the gateway (a sidecar pod): the first fetch is tried when the
  app opens, then retried in the background with backoff (1 s doubling to 30 s) until it succeeds, and
  at once when /readyz asks (`nudge`, at most once a second: a probe finds LiteLLM up as soon as it is);
  until then the models that need it are unpriced (refused) and the catalogue reports itself incomplete
  (/readyz). Each reload fetches it again (LiteLLM may have been restarted with a new config); a failed
  fetch keeps the last one read and retries in the background, as it does while deployments the config
  needs priced are missing from it.
- **The price version's table** is stored by `register` before requests can be held under it when the
  database answers; when it does not, the snapshot serves anyway (nothing can be held without the
  database) and the table is stored as soon as it answers.

Reloads never overlap (one lock). A background refresh of model info that changes nothing swaps nothing; a
SIGHUP is always answered in the log ("reloaded", "unchanged", or a line per problem refused) and counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from proxy.config.live import LiveConfig, Snapshot
from proxy.config.modelinfo import InfoRow, parse_model_info
from proxy.config.settings import ConfigError
from proxy.tasks import cancel, wait_event

log = logging.getLogger("creditgate.config")

Load = Callable[[Sequence[InfoRow] | None], Snapshot]
"""Read and check both files, with the model info read so far; raises `ConfigError` (one line per problem)."""
FetchInfo = Callable[[], Awaitable[bytes]]
"""GET LiteLLM's /model/info with the master key; raises on any failure."""
Register = Callable[[Snapshot], Awaitable[None]]
"""Store the snapshot's price table under its version (idempotent); raises when the database does not answer."""
OnReload = Callable[[str, Snapshot | None], None]
"""Metrics hook: "ok" with the snapshot now serving, or "failed"."""

Stamp = tuple[int, int, int] | None


class Reloader:
    def __init__(self, live: LiveConfig, load: Load, *, fetch: FetchInfo | None = None,
                 register: Register | None = None, on_reload: OnReload | None = None,
                 watch: Sequence[Path] = (), poll_seconds: float = 0.0,
                 retry_seconds: tuple[float, float] = (1.0, 30.0), fetch_timeout: float = 10.0) -> None:
        self.live = live
        self._load, self._fetch, self._register = load, fetch, register
        self._on_reload: OnReload = on_reload if on_reload is not None else (lambda outcome, snapshot: None)
        self._watch, self._poll = tuple(watch), poll_seconds
        self._retry, self._fetch_timeout = retry_seconds, fetch_timeout
        self._info: tuple[InfoRow, ...] | None = None
        self._info_failed = False  # the last fetch failed: retry in the background
        self._fetched_at = float("-inf")  # loop time of the last attempt
        self._unregistered: list[Snapshot] = []
        self._register_failed = False
        self._stamps: tuple[Stamp, ...] = ()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._reasons: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._previous_handler: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ the part

    async def open(self) -> None:
        """Try model info once (a swap if it completes the catalogue), store the serving snapshot's table,
        then watch for signals, changed files and what is still owed."""
        self._loop = asyncio.get_running_loop()
        self._stamps = self._stat()
        first = self.live.current
        if self._fetch is not None:  # briefly: a LiteLLM that is not up is retried in the background
            await self.reload("start-up", fetch_timeout=min(self._fetch_timeout, 3.0))
        if self.live.current is first:
            self._unregistered.append(first)
            await self._register_pending()
        self._task = self._loop.create_task(self._run(), name="creditgate-config-reload")
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGHUP, self._on_signal)

    async def close(self) -> None:
        if self._previous_handler is not None and signal.getsignal(signal.SIGHUP) == self._on_signal:
            signal.signal(signal.SIGHUP, self._previous_handler)
        self._previous_handler = None
        task, self._task = self._task, None
        await cancel(task)

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        """Runs in the main thread between two steps of the loop: hand over to the loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.request, "SIGHUP")

    def request(self, reason: str) -> None:
        """Ask for a reload (done by the background task, in order, never two at once)."""
        self._reasons.append(reason)
        self._wake.set()

    def nudge(self) -> None:
        """Fetch what is owed now rather than at the next backoff step (at most once a second)."""
        if self._loop is not None and self._owed() and self._loop.time() - self._fetched_at >= 1.0:
            self._fetched_at = self._loop.time()
            self.request("model info")

    # ------------------------------------------------------------------ reloading

    async def reload(self, reason: str, *, fetch_timeout: float | None = None) -> bool:
        """Re-read everything and swap; False when the files were refused (the old snapshot serves on)."""
        async with self._lock:
            stamps = self._stat()
            await self._refresh_info(fetch_timeout or self._fetch_timeout)
            try:
                snapshot = await asyncio.to_thread(self._load, self._info)
            except ConfigError as exc:
                self._stamps = stamps
                current = self.live.current.version
                for line in str(exc).splitlines():
                    log.error("configuration refused: %s", line, extra={"reason": reason, "price_version": current})
                log.error("configuration reload refused; the previous configuration keeps serving",
                          extra={"reason": reason, "price_version": current})
                self._on_reload("failed", None)
                return False
            except Exception:  # a defect, not the operator's file: the old snapshot serves on all the same
                self._stamps = stamps
                log.exception("configuration reload failed", extra={"reason": reason})
                self._on_reload("failed", None)
                return False
            self._stamps = stamps
            await self._swap(snapshot, reason)
            return True

    async def _swap(self, snapshot: Snapshot, reason: str) -> None:
        """Store the new price table (or owe it), then serve the snapshot; a background refresh that
        changes nothing swaps nothing."""
        old = self.live.current
        same = (old.version == snapshot.version and old.policy == snapshot.policy
                and old.catalogue.models == snapshot.catalogue.models
                and old.catalogue.complete == snapshot.catalogue.complete)
        if same and reason in ("start-up", "model info"):
            return
        if not same:
            self._unregistered.append(snapshot)
            await self._register_pending()
        self.live.current = snapshot
        catalogue = snapshot.catalogue
        log.info("configuration %s", "unchanged" if same else "reloaded", extra={
            "reason": reason, "price_version": snapshot.version, "previous_price_version": old.version,
            "models": len(catalogue.models), "model_info": catalogue.with_model_info,
            "catalogue_complete": catalogue.complete, "missing_model_info": list(catalogue.missing)})
        self._on_reload("ok", snapshot)

    async def _refresh_info(self, timeout: float) -> None:
        """Fetch model info; on failure keep what was read before and retry in the background."""
        if self._fetch is None:
            return
        self._fetched_at = asyncio.get_running_loop().time()
        try:
            raw = await asyncio.wait_for(self._fetch(), timeout)
            self._info = await asyncio.to_thread(parse_model_info, raw)
        except Exception as exc:  # noqa: BLE001 - LiteLLM down or not ready yet: said once, retried
            if not self._info_failed:
                log.warning("LiteLLM's model info could not be read; retrying in the background",
                            extra={"error": type(exc).__name__, "detail": str(exc)[:120] if
                                   isinstance(exc, ValueError) else None})
            self._info_failed = True
            return
        if self._info_failed:
            log.info("LiteLLM's model info read", extra={"rows": len(self._info)})
        self._info_failed = False

    async def _register_pending(self) -> bool:
        """Store the tables of the snapshots that served without one; True when none is left."""
        if self._register is None:
            self._unregistered.clear()
            return True
        while self._unregistered:
            snapshot = self._unregistered[0]
            try:
                await self._register(snapshot)
            except ValueError as exc:  # refused for good (another table under this name): said, not retried
                log.error("the price table was refused: %s", exc, extra={"price_version": snapshot.version})
            except Exception as exc:  # noqa: BLE001 - the database is down: stored when it answers (said once)
                if not self._register_failed:
                    log.warning("the price table could not be stored yet; retrying in the background",
                                extra={"price_version": snapshot.version, "error": type(exc).__name__})
                self._register_failed = True
                return False
            self._unregistered.pop(0)
        self._register_failed = False
        return True

    # ------------------------------------------------------------------ the background task

    def _owed(self) -> bool:
        """Model info still needed (never read, the last read failed, or it lacked deployments the config
        needs priced), or a price table not stored yet."""
        catalogue = self.live.current.catalogue
        wanted = self._fetch is not None and (self._info is None or self._info_failed or bool(catalogue.missing))
        return wanted or bool(self._unregistered)

    async def _run(self) -> None:
        delay = self._retry[0]
        while True:
            waits = ([delay] if self._owed() else []) + ([self._poll] if self._poll > 0 else [])
            await wait_event(self._wake, min(waits) if waits else None)
            try:
                if self._wake.is_set():
                    self._wake.clear()
                    reasons, self._reasons = self._reasons, []
                    await self.reload(", ".join(dict.fromkeys(reasons)) or "request")
                elif self._owed():
                    if self._fetch is not None and (self._info is None or self._info_failed
                                                    or self.live.current.catalogue.missing):
                        await self.reload("model info")
                    else:
                        await self._register_pending()
                    delay = self._retry[0] if not self._owed() else min(delay * 2, self._retry[1])
                    continue
                elif self._poll > 0 and self._stat() != self._stamps:
                    await self.reload("file changed")
            except Exception:  # noqa: BLE001 - a reload must never end the task that serves the next one
                log.exception("configuration reload failed")
                self._on_reload("failed", None)
            delay = self._retry[0]

    def _stat(self) -> tuple[Stamp, ...]:
        return tuple(_stamp(path) for path in self._watch)


def _stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)  # follows symlinks: a ConfigMap's ..data swap changes the inode
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino
