"""A model's gate (`models.<m>.max_in_flight`, `queue:`): first come, first served, a
bounded queue, a timeout, and no place lost to a cancelled or refused request.

The gates run on the real event loop; the proxy-wide place they take second is the real
`Admission` of a runtime built by `app.build_runtime` (nothing is started: no socket is
opened until a request is sent). Every test runs under a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from typing import Any

import pytest

from proxy.admission import ModelGate
from proxy.app import build_runtime
from proxy.config import parse_config
from proxy.config.resilience import QueueConfig
from proxy.errors import Overloaded
from proxy.runtime import Runtime
from proxy.telemetry.record import ExchangeRecord

pytestmark = pytest.mark.anyio

DEADLINE_S = 5.0


def record() -> ExchangeRecord:
    return ExchangeRecord(request_id="r", method="POST", path="/", started=0.0)


def gate(limit: int = 1, size: int = 10, timeout_s: float = DEADLINE_S) -> ModelGate:
    return ModelGate(limit, QueueConfig(size=size, timeout_s=timeout_s), nullcontext())


async def settle(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until `condition()` holds (the test's deadline bounds it).

    The gate has no event to wait on, and stepping the loop one turn at a time is what
    puts each waiter in the queue before the next one arrives."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0)


class Holder:
    """A request that takes a place through the gate and keeps it until told to leave."""

    def __init__(self, g: ModelGate, name: str, admitted: list[str]) -> None:
        self.record = record()
        self.leave = asyncio.Event()
        self.inside = asyncio.Event()

        async def run() -> None:
            with await g.admit(self.record):
                admitted.append(name)
                self.inside.set()
                await self.leave.wait()

        self.task = asyncio.create_task(run(), name=name)


async def queue_up(g: ModelGate, names: str, admitted: list[str]) -> list[Holder]:
    """One holder per name, each in the queue before the next one arrives."""
    holders = []
    for name in names:
        before = g.waiting
        holders.append(Holder(g, name, admitted))
        await settle(lambda before=before: g.waiting == before + 1)
    return holders


async def test_a_free_place_is_taken_at_once_and_the_record_is_untouched() -> None:
    g, r = gate(limit=2), record()
    async with asyncio.timeout(DEADLINE_S):
        with await g.admit(r):
            assert g.in_flight == 1
        assert g.in_flight == 0
    assert (r.queue, r.queued_s) == (None, 0.0)


async def test_waiters_get_places_strictly_in_arrival_order() -> None:
    g, admitted = gate(limit=1), []
    async with asyncio.timeout(DEADLINE_S):
        first = Holder(g, "first", admitted)
        await first.inside.wait()
        waiters = await queue_up(g, "abcd", admitted)
        first.leave.set()
        for waiter in waiters:
            await waiter.inside.wait()
            assert g.in_flight == 1
            waiter.leave.set()
        await asyncio.gather(first.task, *(w.task for w in waiters))
    assert admitted == ["first", "a", "b", "c", "d"]
    assert all(w.record.queue == "waited" and w.record.queued_s > 0 for w in waiters)
    assert (g.in_flight, g.waiting) == (0, 0)


async def test_a_newcomer_never_takes_a_place_freed_for_a_waiter() -> None:
    g, admitted = gate(limit=1), []
    async with asyncio.timeout(DEADLINE_S):
        with await g.admit(record()):
            (waiter,) = await queue_up(g, "w", admitted)
            waiter.leave.set()
        # The place just freed is the waiter's, though its task has not run yet: a request
        # arriving in this same instant queues behind it.
        r = record()
        with await g.admit(r):
            admitted.append("newcomer")
        await waiter.task
    assert admitted == ["w", "newcomer"]
    assert r.queue == "waited"
    assert g.in_flight == 0


async def test_a_full_queue_refuses_at_once() -> None:
    g, admitted = gate(limit=1, size=2), []
    async with asyncio.timeout(DEADLINE_S):
        first = Holder(g, "first", admitted)
        await first.inside.wait()
        waiters = await queue_up(g, "ab", admitted)
        r = record()
        with pytest.raises(Overloaded) as refused:
            await g.admit(r)
        assert (r.queue, r.queued_s) == ("full", 0.0)
        assert refused.value.message == "Too many concurrent requests."
        assert g.waiting == 2
        first.leave.set()
        for waiter in waiters:
            await waiter.inside.wait()
            waiter.leave.set()
        await asyncio.gather(first.task, *(w.task for w in waiters))
    assert admitted == ["first", "a", "b"]
    assert g.in_flight == 0


async def test_size_zero_means_no_queue() -> None:
    g, admitted = gate(limit=1, size=0), []
    async with asyncio.timeout(DEADLINE_S):
        first = Holder(g, "first", admitted)
        await first.inside.wait()
        r = record()
        with pytest.raises(Overloaded):
            await g.admit(r)
        assert r.queue == "full"
        first.leave.set()
        await first.task
        with await g.admit(record()):
            assert g.in_flight == 1
    assert g.in_flight == 0


async def test_a_wait_past_timeout_is_refused_and_leaves_nothing_behind() -> None:
    g, admitted = gate(limit=1, timeout_s=0.05), []
    async with asyncio.timeout(DEADLINE_S):
        first = Holder(g, "first", admitted)
        await first.inside.wait()
        r = record()
        with pytest.raises(Overloaded):
            await g.admit(r)
        assert r.queue == "timeout"
        assert r.queued_s >= 0.04  # the loop's clock may round the timer a little early
        assert g.waiting == 0
        first.leave.set()
        await first.task
    assert g.in_flight == 0


async def test_only_the_timed_out_waiter_leaves_the_queue() -> None:
    g, admitted = gate(limit=1, timeout_s=0.2), []
    async with asyncio.timeout(DEADLINE_S):
        first = Holder(g, "first", admitted)
        await first.inside.wait()
        (early,) = await queue_up(g, "e", admitted)
        await asyncio.sleep(0.1)
        (late,) = await queue_up(g, "l", admitted)
        with pytest.raises(Overloaded):
            await early.task
        assert early.record.queue == "timeout"
        assert g.waiting == 1
        first.leave.set()
        await late.inside.wait()
        late.leave.set()
        await asyncio.gather(first.task, late.task)
    assert admitted == ["first", "l"]
    assert late.record.queue == "waited"
    assert g.in_flight == 0


async def test_a_waiter_cancelled_in_the_queue_leaves_it() -> None:
    g, admitted = gate(limit=1), []
    async with asyncio.timeout(DEADLINE_S):
        first = Holder(g, "first", admitted)
        await first.inside.wait()
        gone, stays = await queue_up(g, "gs", admitted)
        gone.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone.task
        assert g.waiting == 1
        first.leave.set()
        await stays.inside.wait()
        stays.leave.set()
        await asyncio.gather(first.task, stays.task)
    assert admitted == ["first", "s"]
    assert g.in_flight == 0


async def test_a_waiter_cancelled_as_it_is_handed_a_place_passes_the_place_on() -> None:
    g, admitted = gate(limit=1), []
    async with asyncio.timeout(DEADLINE_S):
        with await g.admit(record()):
            handed, next_ = await queue_up(g, "hn", admitted)
        # `handed` was given the place; cancelled before its task runs again, it must
        # pass the place on instead of keeping it.
        handed.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handed.task
        await next_.inside.wait()
        assert (g.in_flight, g.waiting) == (1, 0)
        next_.leave.set()
        await next_.task
    assert admitted == ["n"]
    assert g.in_flight == 0


async def test_a_place_freed_as_a_waiter_is_cancelled_goes_to_the_next() -> None:
    g, admitted = gate(limit=1), []
    async with asyncio.timeout(DEADLINE_S):
        with await g.admit(record()):
            gone, next_ = await queue_up(g, "gn", admitted)
            # Cancelled in the same instant as the place frees: it must not get it.
            gone.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone.task
        await next_.inside.wait()
        assert (g.in_flight, g.waiting) == (1, 0)
        next_.leave.set()
        await next_.task
    assert admitted == ["n"]
    assert g.in_flight == 0


async def test_a_request_cancelled_while_holding_gives_its_place_to_the_next() -> None:
    g, admitted = gate(limit=1), []
    async with asyncio.timeout(DEADLINE_S):
        first = Holder(g, "first", admitted)
        await first.inside.wait()
        (waiter,) = await queue_up(g, "w", admitted)
        first.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first.task
        await waiter.inside.wait()
        waiter.leave.set()
        await waiter.task
    assert g.in_flight == 0


def two_models(max_in_flight: int) -> Any:
    return parse_config(
        {
            "backends": {"serverless": {"url": "http://127.0.0.1:9", "path": "/invocations"}},
            "models": {"gated": {"max_in_flight": 1, "queue": {"size": 5}}, "free": {}},
            "limits": {"max_in_flight": max_in_flight},
        },
        {},
    )


@asynccontextmanager
async def runtime_of(max_in_flight: int) -> AsyncIterator[Runtime]:
    runtime = build_runtime(two_models(max_in_flight))
    try:
        yield runtime
    finally:
        await runtime.aclose()


async def test_only_models_with_a_limit_have_a_gate() -> None:
    async with runtime_of(10) as runtime:
        assert set(runtime.gates) == {"gated"}
        assert runtime.gates["gated"].then is runtime.admission


async def test_a_queued_request_holds_no_proxy_wide_place() -> None:
    admitted: list[str] = []
    async with runtime_of(10) as runtime, asyncio.timeout(DEADLINE_S):
        g = runtime.gates["gated"]
        first = Holder(g, "first", admitted)
        await first.inside.wait()
        waiters = await queue_up(g, "abc", admitted)
        assert (g.in_flight, g.waiting, runtime.in_flight) == (1, 3, 1)
        for holder in (first, *waiters):
            holder.task.cancel()
        await asyncio.gather(first.task, *(w.task for w in waiters), return_exceptions=True)
    assert (g.in_flight, g.waiting, runtime.in_flight) == (0, 0, 0)


async def test_a_refusal_of_the_proxy_wide_place_gives_the_model_place_back() -> None:
    async with runtime_of(1) as runtime, asyncio.timeout(DEADLINE_S):
        g = runtime.gates["gated"]
        with runtime.admission:  # another model's request holds the proxy's only place
            with pytest.raises(Overloaded), await g.admit(record()):
                pass
            assert g.in_flight == 0
        with await g.admit(record()):
            assert (g.in_flight, runtime.in_flight) == (1, 1)
    assert (g.in_flight, runtime.in_flight) == (0, 0)
