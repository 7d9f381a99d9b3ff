"""The settlement spool: settlements that could not reach PostgreSQL, kept on local disk until they can.

PostgreSQL may be away for seconds to a minute (a restart, a failover). New requests are refused then
(503 `ledger_unavailable`), but one admitted before has been served and its settlement must not be lost:
when a settle (or void) still finds the ledger unreachable after its bounded retry, `Settle`
(policies/settlement.py) appends it here and answers the client; `proxy/ledger/replay.py` settles it
once the database answers again (and says what happens if this disk is lost, and where it lives).

**Format.** One JSON line per settlement or void (proxy/ledger/spool_entry.py).

**Durability.** `append` writes and fsyncs before it returns (concurrent appends share one write and one
fsync, in a thread); a new file's directory entry is fsynced; a failed write is truncated away.
Compaction writes the entries left to a new file, fsyncs it, renames it over the old one and fsyncs the
directory.

**Ownership.** Each process writes only its own file, `spool-<ledger>-<pid>-<ms>-<rand>.jsonl`, and holds
an exclusive `flock` on it while it lives (`<ledger>` hashes the DSN's hosts, ports and database, so
gateways of different databases sharing a directory never replay into each other's). A file whose lock
can be taken belongs to a dead process: `adopt` appends its entries to this process's file (fsync), then
unlinks it. So two replicas sharing the directory never replay one file twice; an adopter that dies
between its append and the unlink leaves duplicates, which settle idempotently. After taking a lock the
inode is compared with the path's: a file compacted or adopted meanwhile is no longer the one there.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from proxy.config.settings import ConfigError
from proxy.ledger.spool_entry import Entry, Key, parse_lines

log = logging.getLogger("creditgate.spool")

T = TypeVar("T")


class Spool:
    """This process's spool file in `directory`. `retry_seconds` is how long a settle waits for the ledger
    before it is spooled (Books); `on_depth(n)` hears the number of entries waiting."""

    def __init__(self, directory: Path, ledger: str, *, retry_seconds: float = 2.0,
                 on_depth: Callable[[int], None] | None = None) -> None:
        self.directory = directory
        self.retry_seconds = retry_seconds
        self._prefix = f"spool-{ledger}-"
        self._on_depth = on_depth or (lambda n: None)
        self._path: Path | None = None
        self._fd: int | None = None
        self._torn = False  # a failed write could not be truncated: start the next one on a new line
        self._pending: dict[Key, Entry] = {}
        self._queue: list[tuple[Entry, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one writer of the file at a time: appends, compaction, adoption
        self.changed = asyncio.Event()  # set when entries arrive (the replayer wakes up)

    @property
    def path(self) -> Path | None:
        return self._path

    def pending(self) -> list[Entry]:
        """The entries waiting, oldest first."""
        return list(self._pending.values())

    async def open(self) -> None:
        """Create and lock this process's file (start-up fails with one line if the directory is unusable)."""
        if self._fd is None:
            try:
                self._path, self._fd = await asyncio.to_thread(self._create)
            except OSError as exc:
                raise ConfigError(f"CREDITGATE_SPOOL_DIR ({self.directory}) cannot hold the settlement spool: "
                                  f"{exc.strerror or exc}") from None

    async def append(self, entry: Entry) -> None:
        """Return once `entry` is written and fsynced; raises OSError (nothing of it left in the file)."""
        if self._fd is None:
            raise RuntimeError("the spool is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append((entry, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="creditgate-spool-writer")
        await asyncio.shield(future)

    async def forget(self, keys: Iterable[Key]) -> None:
        """Drop settled entries: the file is rewritten with the rest (new file, fsync, rename, fsync dir)."""
        async with self._lock:
            for key in keys:
                self._pending.pop(key, None)
            if self._fd is not None:
                await _to_the_end(self._rewrite, [e.line for e in self._pending.values()])
        self._on_depth(len(self._pending))

    async def adopt(self) -> int:
        """Take over the spool files of dead processes (their locks are free); returns the entries taken."""
        async with self._lock:
            if self._fd is None:
                return 0
            taken = await _to_the_end(self._adopt)
            for entry in taken:
                self._pending.setdefault(entry.key, entry)
        if taken:
            self._changed()
        return len(taken)

    async def close(self) -> None:
        """Flush what is queued, then release the file: removed when nothing waits in it, else left (its lock
        released) for whoever opens the directory next. Safe to call more than once."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.gather(asyncio.shield(self._flusher), return_exceptions=True)
        async with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                await _to_the_end(self._release, fd, not self._pending)

    def _changed(self) -> None:
        self._on_depth(len(self._pending))
        self.changed.set()

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                async with self._lock:
                    await _to_the_end(self._write, b"".join(entry.line for entry, _ in batch))
                    for entry, _ in batch:
                        self._pending[entry.key] = entry
            except Exception as exc:  # noqa: BLE001 - every waiting append hears it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self._changed()
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    # ------------------------------------------------------------ file work (in a thread, under _lock)

    def _create(self) -> tuple[Path, int]:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{self._prefix}{os.getpid()}-{time.time_ns() // 1_000_000}-{secrets.token_hex(3)}.jsonl"
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fsync_dir(self.directory)
        return path, fd

    def _write(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            raise RuntimeError("the spool is closed")
        if self._torn:
            data = b"\n" + data
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, size)  # never leave half a line for the next append to be glued to
            except OSError:
                self._torn = True
            raise
        self._torn = False

    def _rewrite(self, lines: list[bytes]) -> None:
        path, old = self._path, self._fd
        assert path is not None and old is not None
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # locked before the name is ours to see
            _write_all(fd, b"".join(lines))
            os.fsync(fd)
            os.rename(tmp, path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self._fd, self._torn = fd, False
        os.close(old)
        fsync_dir(self.directory)

    def _adopt(self) -> list[Entry]:
        taken: list[Entry] = []
        for path in sorted(self.directory.glob(f"{self._prefix}*.jsonl")):
            if path != self._path:
                try:  # what was taken before a failure is already in our file: it must reach _pending too
                    taken += self._take(path)
                except OSError as exc:
                    log.error("could not adopt spool file %s: %s", path.name, exc.strerror or exc)
        for tmp in self.directory.glob(f".{self._prefix}*.jsonl.tmp"):  # a compaction cut short by a crash
            self._remove_stale(tmp)
        return taken

    def _take(self, path: Path) -> list[Entry]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # its process is alive, or another replica is taking it right now
            if not same_file(fd, path):
                return []  # compacted or taken since we listed the directory
            with os.fdopen(os.dup(fd), "rb") as f:
                entries, bad = parse_lines(f.read())
            if bad:  # a write cut short by a crash (never acknowledged), or damage
                log.error("spool file %s: %d line(s) that are not entries were left out", path.name, bad)
            if entries:
                self._write(b"".join(e.line for e in entries))  # durable in our file before theirs goes
            path.unlink()
            fsync_dir(self.directory)
            log.warning("adopted %d spooled settlement(s) from %s", len(entries), path.name)
            return entries
        finally:
            os.close(fd)

    def _remove_stale(self, tmp: Path) -> None:
        try:
            if time.time() - tmp.stat().st_mtime < 60:  # its writer may still be between open and flock
                return
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if same_file(fd, tmp):
                tmp.unlink()
        except BlockingIOError:
            pass
        finally:
            os.close(fd)

    def _release(self, fd: int, empty: bool) -> None:
        try:
            if empty and self._path is not None:
                self._path.unlink(missing_ok=True)
                fsync_dir(self.directory)
        finally:
            os.close(fd)


async def _to_the_end(work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` in a thread, awaited to its end even when the caller is cancelled (then re-raised):
    a file operation must not outlive the lock around it."""
    future = asyncio.ensure_future(asyncio.to_thread(work, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(directory: Path) -> None:
    """Make a file's creation, rename or removal in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def same_file(fd: int, path: Path) -> bool:
    """Whether the open `fd` is still the file at `path`."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
