"""`TaskSet`: the one place in `proxy/` that creates background tasks.

The event loop keeps only weak references to tasks, so an unreferenced task can be
garbage-collected mid-flight (mitmproxy's asyncio_utils); ruff bans bare
`asyncio.create_task` so that every task is held here until it finishes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

LOGGER = logging.getLogger("serving_proxy")


class TaskSet:
    """Strong references to background tasks until they finish; errors are logged."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            LOGGER.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        """Cancel what is still running and wait for it to unwind."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def checkpoint() -> None:
    """Raise `CancelledError` if this task's cancellation was requested but swallowed on
    the way (redis-py's client, cancelled mid-command, can return normally); a loop that
    calls this every turn stops all the same."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


async def pause(seconds: float) -> None:
    """`asyncio.sleep` for a background loop: `checkpoint` first."""
    checkpoint()
    await asyncio.sleep(seconds)
