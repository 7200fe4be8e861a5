"""A model's own limit on requests in flight (`models.<m>.max_in_flight`) and the bounded
first-come, first-served queue in front of it (`queue: {size, timeout_s}`).

One `ModelGate` per model that sets `max_in_flight`, built once per app (`proxy.runtime`);
a model without it has no gate, so its requests pay one dict lookup and nothing else.

The rules, which the tests pin down:

- A request waits only when the model's places are all taken. A place that frees while
  requests wait is handed straight to the oldest of them, so a newcomer never takes it
  first: the count of places taken does not drop while anyone waits.
- The queue holds at most `size` waiters (0: no queue); one more is refused at once.
- A waiter still queued after `timeout_s` is refused then.
- Refused means `Overloaded`: 503 `Too many concurrent requests.` (§6.5 UO), the shape
  both protocols share (§1.5 step 4).
- A waiter cancelled while queued (a shutdown, a caller's deadline) leaves the queue at
  once; one cancelled just after it was handed a place hands that place on. Neither
  leaks a place nor leaves an entry that others wait behind.
- The model's place is taken first and the proxy's (`limits.max_in_flight`) second, so a
  queued request holds no proxy-wide place that another model's request could use.

The request's record learns how the wait ended (`queue`: `waited`, `full`, `timeout`) and
how long it took (`queued_s`); a request that found a free place leaves both untouched.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from contextlib import AbstractContextManager, suppress
from types import TracebackType
from typing import Protocol, Self

from proxy.config import ModelConfig
from proxy.config.resilience import QueueConfig
from proxy.errors import Overloaded


class Queued(Protocol):
    """What a gate writes onto: the request's record (`telemetry.record`)."""

    queue: str | None
    queued_s: float


class ModelGate:
    """At most `limit` of one model's requests in flight, the rest queued.

    Used as `with runtime.admission if gate is None else await gate.admit(record):`:
    `admit` waits for a place of the model and returns the gate, whose `with` block then
    takes the proxy's place (`then`) and gives both back at its end. The gate keeps no
    state per request, so one object serves every request of the model.
    """

    __slots__ = ("_waiters", "in_flight", "limit", "size", "then", "timeout_s")

    def __init__(
        self, limit: int, queue: QueueConfig, then: AbstractContextManager[object]
    ) -> None:
        self.limit = limit
        self.size = queue.size
        self.timeout_s = queue.timeout_s
        # The proxy-wide admission, taken once the model's place is held.
        self.then = then
        self.in_flight = 0
        # A waiter's future resolves True when handed a place, False when it timed out.
        self._waiters: deque[asyncio.Future[bool]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def admit(self, record: Queued) -> Self:
        """A place of the model, now or after waiting in the queue.

        Raises:
            Overloaded: the queue is full, or the wait reached `timeout_s`.
        """
        # While anyone waits every place is taken (a freed place goes to a waiter), so a
        # free place means an empty queue: a newcomer cannot jump it.
        if self.in_flight < self.limit:
            self.in_flight += 1
            return self
        if len(self._waiters) >= self.size:
            record.queue = "full"
            raise Overloaded()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        start = loop.time()
        timer = loop.call_later(self.timeout_s, self._expire, waiter)
        try:
            admitted = await waiter
        except BaseException:
            self._abandon(waiter)
            raise
        finally:
            timer.cancel()
            record.queued_s = loop.time() - start
        if not admitted:
            record.queue = "timeout"
            raise Overloaded()
        record.queue = "waited"
        return self

    def __enter__(self) -> None:
        try:
            self.then.__enter__()
        except BaseException:
            self._release()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.then.__exit__(exc_type, exc, tb)
        finally:
            self._release()

    def _release(self) -> None:
        """Give a place back: to the oldest waiter if any, else to the pool."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            # A cancelled waiter whose task has not run its cleanup yet: skip it.
            if not waiter.done():
                waiter.set_result(True)
                return
        self.in_flight -= 1

    def _expire(self, waiter: asyncio.Future[bool]) -> None:
        if not waiter.done():
            self._waiters.remove(waiter)
            waiter.set_result(False)

    def _abandon(self, waiter: asyncio.Future[bool]) -> None:
        """The waiter's task was cancelled: leave the queue, or pass on a place handed to it
        in the same instant."""
        if waiter.done() and not waiter.cancelled():
            if waiter.result():
                self._release()
            return  # expired: already out of the queue
        waiter.cancel()
        # A release may already have skipped it.
        with suppress(ValueError):
            self._waiters.remove(waiter)


def build_gates(
    models: Mapping[str, ModelConfig], then: AbstractContextManager[object]
) -> dict[str, ModelGate]:
    """A gate for each model that sets `max_in_flight`, by model name; none for the rest."""
    return {
        name: ModelGate(model.max_in_flight, model.queue, then)
        for name, model in models.items()
        if model.max_in_flight is not None
    }
