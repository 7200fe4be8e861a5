"""The one owner of background tasks: strong references until done, cancelled on close."""

from __future__ import annotations

import asyncio
import contextlib

import anyio
import pytest

from proxy.tasks import TaskSet, pause

pytestmark = pytest.mark.anyio


async def test_task_set_holds_tasks_until_done_and_cancels_on_close() -> None:
    tasks = TaskSet()
    gate = asyncio.Event()
    done: list[str] = []

    async def work(name: str) -> None:
        await gate.wait()
        done.append(name)

    spawned = [tasks.spawn(work("a"), name="a"), tasks.spawn(work("b"), name="b")]
    assert len(tasks) == 2
    gate.set()
    await asyncio.wait(spawned)
    await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
    assert sorted(done) == ["a", "b"]
    assert len(tasks) == 0
    never = asyncio.Event()

    async def stuck() -> None:
        await never.wait()

    tasks.spawn(stuck(), name="stuck")
    await tasks.aclose()
    assert len(tasks) == 0


async def test_a_loop_stops_though_a_library_swallowed_its_cancellation() -> None:
    tasks = TaskSet()
    turns = 0

    async def swallowing_call() -> None:
        # What a client library cancelled mid-command may do: return as if nothing happened.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(10)

    async def loop() -> None:
        nonlocal turns
        while True:
            turns += 1
            await swallowing_call()
            await pause(0.001)

    tasks.spawn(loop(), name="loop")
    await asyncio.sleep(0.01)
    with anyio.fail_after(2):
        await tasks.aclose()
    assert turns == 1
    assert len(tasks) == 0
