"""The settlement spool's file: its line format, fsync before an append returns, group-committed appends,
compaction by write-new + rename, a torn last line, a failed write, flock ownership and adoption of a
dead process's file, and a real SIGKILL while appending (nothing acknowledged is lost)."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.config.settings import ConfigError
from proxy.ledger.spool import Spool, same_file
from proxy.ledger.spool_entry import Entry
from tests.ledger.conftest import usage

ROOT = Path(__file__).resolve().parents[2]
LEDGER = "0123456789ab"


def entry(rid: str, charge: int = 42, *, org: str = "org_s") -> Entry:
    return Entry.of(org, rid, usage(charge, prompt=10, completion=5), {"route": "chat/completions"})


def spooled_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"spool-{LEDGER}-*.jsonl"))


@pytest.fixture
async def spool(tmp_path: Path) -> Any:
    s = Spool(tmp_path, LEDGER)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths fsynced (read from /proc before the real fsync runs)."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    yield seen


def locked_elsewhere(path: Path) -> bool:
    """Whether another open file description holds the file's flock (as another process would see it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# ------------------------------------------------------------------ appending


async def test_append_returns_once_the_line_is_written_and_fsynced(tmp_path: Path, fsyncs: list[str]) -> None:
    s = Spool(tmp_path, LEDGER)
    await s.open()
    path = s.path
    assert path is not None and spooled_files(tmp_path) == [path]
    assert path.name.startswith(f"spool-{LEDGER}-{os.getpid()}-")
    assert fsyncs == [str(tmp_path)]  # the new file's directory entry
    assert locked_elsewhere(path)
    e = entry("req_1")
    await s.append(e)
    assert fsyncs == [str(tmp_path), str(path)]
    assert path.read_bytes() == e.line
    assert [x.key for x in s.pending()] == [e.key]
    await s.close()


async def test_concurrent_appends_share_one_write_and_one_fsync(spool: Spool, fsyncs: list[str]) -> None:
    lines = [entry(f"req_{i}") for i in range(50)]
    await asyncio.gather(*(spool.append(e) for e in lines))
    assert spool.path is not None
    assert fsyncs == [str(spool.path)]
    assert spool.path.read_bytes() == b"".join(e.line for e in lines)
    depth: list[int] = []
    s2 = Spool(spool.directory, "feedfeedfeed", on_depth=depth.append)
    await s2.open()
    await s2.append(entry("x"))
    await s2.forget([entry("x").key])
    await s2.close()
    assert depth == [1, 0]


async def test_a_failed_write_leaves_no_half_line_behind(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second, third = entry("a"), entry("b"), entry("c")
    await spool.append(first)
    real = os.write

    def half_then_full_disk(fd: int, data: Any) -> int:
        real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        await spool.append(second)
    monkeypatch.setattr(os, "write", real)
    assert spool.path is not None and spool.path.read_bytes() == first.line
    await spool.append(third)
    assert spool.path.read_bytes() == first.line + third.line
    assert [e.request_id for e in spool.pending()] == ["a", "c"]


async def test_append_on_a_closed_spool_is_refused(tmp_path: Path) -> None:
    s = Spool(tmp_path, LEDGER)
    with pytest.raises(RuntimeError, match="not open"):
        await s.append(entry("a"))


async def test_an_unusable_directory_stops_start_up_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^CREDITGATE_SPOOL_DIR \(.*/file/spool\) cannot hold the settlement "
                                          r"spool: Not a directory$"):
        await Spool(tmp_path / "file" / "spool", LEDGER).open()


# ------------------------------------------------------------------ compaction and closing


async def test_compaction_writes_a_new_file_renames_it_and_keeps_the_lock(spool: Spool, fsyncs: list[str]) -> None:
    a, b, c = entry("a"), entry("b"), entry("c")
    for e in (a, b, c):
        await spool.append(e)
    path = spool.path
    assert path is not None
    before = path.stat().st_ino
    fsyncs.clear()
    await spool.forget([a.key, c.key])
    assert path.read_bytes() == b.line
    assert path.stat().st_ino != before  # a new file, renamed over the old one
    assert fsyncs == [str(path.with_name(f".{path.name}.tmp")), str(path.parent)]
    assert locked_elsewhere(path) and spooled_files(path.parent) == [path]
    assert not list(path.parent.glob(".*.tmp"))
    d = entry("d")
    await spool.append(d)  # appends go to the new file
    assert path.read_bytes() == b.line + d.line
    await spool.forget([b.key, d.key])
    assert path.read_bytes() == b"" and spool.pending() == []


async def test_close_removes_an_empty_file_and_leaves_one_with_entries_unlocked(tmp_path: Path) -> None:
    empty, full = Spool(tmp_path, LEDGER), Spool(tmp_path, LEDGER)
    await empty.open()
    await full.open()
    await full.append(entry("a"))
    await empty.close()
    await full.close()
    await full.close()  # twice is fine
    assert full.path is not None and spooled_files(tmp_path) == [full.path]
    assert not locked_elsewhere(full.path)
    with pytest.raises(RuntimeError):
        await full.append(entry("b"))


async def test_a_cancelled_compaction_finishes_before_anything_else_touches_the_file(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling a caller (the replayer stopped at shutdown) must not let go of the file while its thread
    still works on it: close() would release a descriptor the compaction is about to swap."""
    await spool.append(entry("a"))
    real = Spool._rewrite
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_rewrite(self: Spool, lines: list[bytes]) -> None:
        loop.call_soon_threadsafe(started.set)
        time.sleep(0.3)
        real(self, lines)

    monkeypatch.setattr(Spool, "_rewrite", slow_rewrite)
    forgetting = asyncio.create_task(spool.forget([entry("a").key]))
    await started.wait()
    forgetting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forgetting
    path = spool.path
    assert path is not None and path.read_bytes() == b""  # the compaction ran to its end first
    await spool.close()  # pending is empty: the file goes
    assert path is not None and not path.exists() and not list(path.parent.glob(".*.tmp"))


# ------------------------------------------------------------------ ownership: flock and adoption


async def test_a_live_file_is_never_adopted_and_a_dead_one_is_taken_whole(tmp_path: Path) -> None:
    live, adopter = Spool(tmp_path, LEDGER), Spool(tmp_path, LEDGER)
    await live.open()
    await adopter.open()
    a, b = entry("a"), Entry.of("org_s", "b", None)
    await live.append(a)
    await live.append(b)
    assert await adopter.adopt() == 0  # its owner holds the lock
    assert live.path is not None and live.path.read_bytes() == a.line + b.line
    await live.close()  # as a dead process leaves it: entries in, lock free
    assert await adopter.adopt() == 2
    assert not live.path.exists()
    assert adopter.path is not None and adopter.path.read_bytes() == a.line + b.line
    assert [e.key for e in adopter.pending()] == [a.key, b.key]
    other = Spool(tmp_path, "feedfeedfeed")  # another database's spool in the same directory
    await other.open()
    await other.append(entry("z"))
    await other.close()
    assert await adopter.adopt() == 0
    await adopter.close()


async def test_two_adopters_never_take_one_file_twice(tmp_path: Path) -> None:
    expected = set()
    for i in range(20):  # twenty dead processes' files
        dead = Spool(tmp_path, LEDGER)
        await dead.open()
        for j in range(3):
            e = entry(f"req_{i}_{j}")
            expected.add(e.key)
            await dead.append(e)
        await dead.close()
    one, two = Spool(tmp_path, LEDGER), Spool(tmp_path, LEDGER)
    await one.open()
    await two.open()
    counts = await asyncio.gather(one.adopt(), two.adopt())
    keys_one, keys_two = {e.key for e in one.pending()}, {e.key for e in two.pending()}
    assert sum(counts) == 60 and keys_one | keys_two == expected and not keys_one & keys_two
    assert sorted(spooled_files(tmp_path)) == sorted(p for p in (one.path, two.path) if p is not None)
    await one.close()
    await two.close()


async def test_adoption_leaves_out_a_torn_line_and_recovers_a_whole_one(tmp_path: Path) -> None:
    a, b, c = entry("a"), entry("b"), entry("c")
    (tmp_path / f"spool-{LEDGER}-1-1-aaaaaa.jsonl").write_bytes(a.line + b.line[:30])
    (tmp_path / f"spool-{LEDGER}-2-2-bbbbbb.jsonl").write_bytes(b"\n" + c.line.rstrip(b"\n"))
    s = Spool(tmp_path, LEDGER)
    await s.open()
    assert await s.adopt() == 2
    assert s.path is not None and s.path.read_bytes() == a.line + c.line
    assert spooled_files(tmp_path) == [s.path]
    await s.close()


async def test_a_file_that_cannot_be_removed_is_adopted_again_later(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = f"spool-{LEDGER}-1-1-aaaaaa.jsonl", f"spool-{LEDGER}-2-2-bbbbbb.jsonl"
    a, b = entry("a"), entry("b")
    (tmp_path / first).write_bytes(a.line)
    (tmp_path / second).write_bytes(b.line)
    real = Path.unlink

    def refuse_second(path: Path, missing_ok: bool = False) -> None:
        if path.name == second:
            raise PermissionError(errno.EACCES, "Permission denied")
        real(path, missing_ok)

    s = Spool(tmp_path, LEDGER)
    await s.open()
    monkeypatch.setattr(Path, "unlink", refuse_second)
    assert await s.adopt() == 1  # the first file's entry; the second stays where it is
    monkeypatch.setattr(Path, "unlink", real)
    assert [e.request_id for e in s.pending()] == ["a"] and (tmp_path / second).exists()
    assert await s.adopt() == 1
    assert [e.request_id for e in s.pending()] == ["a", "b"] and not (tmp_path / second).exists()
    await s.forget([])  # compaction keeps each entry once
    assert s.path is not None and s.path.read_bytes() == a.line + b.line
    await s.close()


async def test_a_stale_compaction_file_is_removed_and_a_fresh_one_kept(tmp_path: Path) -> None:
    stale, fresh = tmp_path / f".spool-{LEDGER}-1-1-aaaaaa.jsonl.tmp", tmp_path / f".spool-{LEDGER}-2-2-bb.jsonl.tmp"
    stale.write_bytes(entry("a").line)
    fresh.write_bytes(entry("b").line)
    os.utime(stale, (time.time() - 120, time.time() - 120))
    s = Spool(tmp_path, LEDGER)
    await s.open()
    assert await s.adopt() == 0  # the original of a compaction cut short is still in place
    assert (stale.exists(), fresh.exists()) == (False, True)
    await s.close()


def test_same_file_tells_a_replaced_path(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("old")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert same_file(fd, path)
        (tmp_path / "g").write_text("new")
        os.rename(tmp_path / "g", path)
        assert not same_file(fd, path)
        path.unlink()
        assert not same_file(fd, path)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ a real crash

_WRITER = """
import asyncio, sys
from pathlib import Path
from proxy.ledger.spool import Spool
from proxy.ledger.spool_entry import Entry
from tests.ledger.conftest import usage

async def main() -> None:
    spool = Spool(Path(sys.argv[1]), sys.argv[2])
    await spool.open()
    i = 0
    while True:
        await asyncio.gather(*(spool.append(Entry.of("org_s", f"req_{i + k}", usage(i + k))) for k in range(3)))
        print(i + 2, flush=True)  # acknowledged up to here
        i += 3

asyncio.run(main())
"""


async def test_a_process_killed_while_appending_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), LEDGER], cwd=ROOT,
                             stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout is not None
    acknowledged = -1
    try:
        while acknowledged < 300:
            line = child.stdout.readline()
            assert line, "the writer exited early"
            acknowledged = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    survivor = Spool(tmp_path, LEDGER)
    await survivor.open()
    taken = await survivor.adopt()
    ids = [e.request_id for e in survivor.pending()]
    assert taken == len(ids) and ids == [f"req_{i}" for i in range(len(ids))]  # in order, no gap
    assert len(ids) >= acknowledged + 1
    assert [e.settlement.charge for e in survivor.pending() if e.settlement] == list(range(len(ids)))
    await survivor.close()
