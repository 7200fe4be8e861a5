"""The memory budget for request bodies in flight (`limits.memory_budget_mb`).

A body is admitted against the budget before it is read: by its Content-Length when it
declares one, chunk by chunk as it arrives when it is chunked. A body that finds no room
waits, first come first served, up to `limits.memory_wait_s`, then is answered 503
`Overloaded` (§6.5 UO): a burst of large bodies slows down or is refused, it never takes
the process past its memory. Room is given back when the request's reply is done.

The default budget is a quarter of the memory the process may use, read once at start-up
(`default_budget_bytes`): the cgroup's limit in a container, else the machine's memory.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from pathlib import Path

from proxy.config.backends import Limits
from proxy.errors import Overloaded

MIB = 1024 * 1024
# The share of the process's memory that bodies in flight may hold: translation, the
# upstream reply and the interpreter need the rest.
DEFAULT_SHARE = 4
CGROUP_V2_MAX = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1_LIMIT = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")

NO_ROOM = "No room for the request body now; retry later."
NEVER_FITS = "Request body is larger than the proxy's memory budget."


def memory_limit(cgroup_texts: tuple[str | None, ...], physical: int) -> int:
    """The memory the process may use: the smallest cgroup limit that is set, else
    `physical`. Pure: `cgroup_texts` are the files' contents (None when absent)."""
    limit = physical
    for text in cgroup_texts:
        value = (text or "").strip()
        # v2 writes "max" when unlimited; v1 writes a page-rounded 2**63-1 instead.
        if value.isdigit() and 0 < int(value) < limit:
            limit = int(value)
    return limit


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def default_budget_bytes() -> int:
    """A quarter of the memory this process may use (reads the cgroup files)."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = memory_limit((_read(CGROUP_V2_MAX), _read(CGROUP_V1_LIMIT)), physical)
    return max(1, limit // DEFAULT_SHARE)


def budget_bytes(limits: Limits) -> int:
    """The configured budget in bytes, or the default when `memory_budget_mb` is unset."""
    if limits.memory_budget_mb is not None:
        return limits.memory_budget_mb * MIB
    return default_budget_bytes()


class MemoryBudget:
    """Bytes held by request bodies, against a capacity; FIFO waiters.

    `take_now` is the hot path (a comparison and an addition); `take` waits when there
    is no room. Every byte taken is given back with `give`.
    """

    __slots__ = ("_waiters", "capacity", "used", "wait_s")

    def __init__(self, capacity: int, wait_s: float) -> None:
        self.capacity = capacity
        self.used = 0
        self.wait_s = wait_s
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def take_now(self, n: int) -> bool:
        """Take `n` bytes if there is room and nobody is waiting ahead."""
        if self.used + n <= self.capacity and not self._waiters:
            self.used += n
            return True
        return False

    async def take(self, n: int) -> None:
        """Take `n` bytes, waiting up to `wait_s` for room.

        Raises:
            Overloaded: no room within `wait_s`, or `n` over the whole capacity.
        """
        if self.take_now(n):
            return
        if n > self.capacity:
            raise Overloaded(NEVER_FITS)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (n, future)
        self._waiters.append(entry)
        timer = loop.call_later(self.wait_s, self._expire, entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.give(n)  # granted just as the waiter was cancelled
            else:
                self._drop(entry)
            raise
        finally:
            timer.cancel()

    def give(self, n: int) -> None:
        """Give back `n` bytes taken earlier; wake the waiters that now fit."""
        self.used -= n
        if self._waiters:
            self._grant()

    def _grant(self) -> None:
        waiters = self._waiters
        while waiters and self.used + waiters[0][0] <= self.capacity:
            n, future = waiters.popleft()
            if not future.done():
                self.used += n
                future.set_result(None)

    def _expire(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        future = entry[1]
        if not future.done():
            future.set_exception(Overloaded(NO_ROOM))
        self._drop(entry)

    def _drop(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        try:
            self._waiters.remove(entry)
        except ValueError:
            return
        # A large waiter that leaves may uncover smaller ones that fit.
        self._grant()
