"""Background work is held until it ends, counted, and drained."""

from __future__ import annotations

import asyncio
import gc

from proxy.tasks import Background, cancel, wait_event


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


async def test_wait_event_says_whether_the_event_fired() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5) is True


async def test_a_loop_on_wait_event_stops_when_cancelled_as_its_event_fires() -> None:
    """The Python 3.11 trap `wait_event` exists for: cancel() in the same tick as set(). A loop on
    `asyncio.wait_for` loses the cancellation here and never ends; this one ends every time."""
    for _ in range(50):
        event = asyncio.Event()

        async def loop(event: asyncio.Event) -> None:
            while True:
                await wait_event(event, 10)
                event.clear()

        task = asyncio.get_running_loop().create_task(loop(event))
        await asyncio.sleep(0)
        event.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert task in done and task.cancelled()


async def test_cancel_ends_a_loop_and_leaves_a_finished_or_absent_task_alone() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    task = asyncio.get_running_loop().create_task(forever())
    await asyncio.sleep(0)
    await cancel(task)
    assert task.cancelled()
    done = asyncio.get_running_loop().create_task(asyncio.sleep(0, result=7))
    await done
    await cancel(done)
    await cancel(None)
    assert done.result() == 7
