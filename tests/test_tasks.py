"""Background work is held until it ends, counted, and drained."""

from __future__ import annotations

import asyncio
import gc

from proxy.tasks import Background


async def test_spawned_work_runs_to_the_end_even_unreferenced_and_is_drained() -> None:
    background, done = Background(), []

    async def work(n: int) -> int:
        await asyncio.sleep(0.01 * n)
        done.append(n)
        return n

    for n in (3, 1, 2):
        background.spawn(work(n))
    gc.collect()  # only the holder references the tasks
    assert len(background) == 3
    await background.drain()
    assert sorted(done) == [1, 2, 3] and len(background) == 0


async def test_a_failing_task_does_not_stop_the_drain() -> None:
    background = Background()

    async def fails() -> None:
        raise RuntimeError("logged by its owner")

    task = background.spawn(fails(), name="failing")
    await background.drain()
    assert task.get_name() == "failing" and isinstance(task.exception(), RuntimeError)
