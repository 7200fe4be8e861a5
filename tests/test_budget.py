"""The memory budget for bodies in flight (proxy/budget.py)."""

from __future__ import annotations

import asyncio

import pytest

from proxy.budget import MIB, NEVER_FITS, NO_ROOM, MemoryBudget, budget_bytes, memory_limit
from proxy.config.backends import Limits
from proxy.errors import Overloaded

pytestmark = pytest.mark.anyio

GIB = 1024 * MIB


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ((None, None), 16 * GIB),  # no cgroup files: the machine's memory
        (("max\n", None), 16 * GIB),  # cgroup v2 without a limit
        ((f"{2 * GIB}\n", None), 2 * GIB),  # cgroup v2 limit
        ((None, "9223372036854771712\n"), 16 * GIB),  # cgroup v1 without a limit
        ((None, f"{512 * MIB}\n"), 512 * MIB),  # cgroup v1 limit
        (("", "garbage"), 16 * GIB),
    ],
)
def test_memory_limit_is_the_cgroups_when_set_else_the_machines(
    texts: tuple[str | None, str | None], expected: int
) -> None:
    assert memory_limit(texts, 16 * GIB) == expected


def test_the_configured_budget_wins_and_the_default_is_a_share_of_memory() -> None:
    assert budget_bytes(Limits(memory_budget_mb=3)) == 3 * MIB
    assert 0 < budget_bytes(Limits()) < 1 << 50


async def test_room_is_taken_and_given_back() -> None:
    budget = MemoryBudget(100, wait_s=1.0)
    assert budget.take_now(60)
    assert not budget.take_now(41)
    budget.give(60)
    assert budget.take_now(100)
    assert budget.used == 100


async def test_a_waiter_gets_room_when_it_is_given_back_first_come_first_served() -> None:
    budget = MemoryBudget(100, wait_s=5.0)
    assert budget.take_now(90)
    order: list[str] = []

    async def want(name: str, n: int) -> None:
        await budget.take(n)
        order.append(name)

    big = asyncio.create_task(want("big", 60))
    await asyncio.sleep(0)
    small = asyncio.create_task(want("small", 5))
    await asyncio.sleep(0)
    assert not budget.take_now(1)  # nobody jumps the queue, even when it would fit
    budget.give(90)
    await asyncio.gather(big, small)
    assert order == ["big", "small"]
    assert budget.used == 65


async def test_a_waiter_without_room_in_time_is_overloaded_and_leaves_the_queue() -> None:
    budget = MemoryBudget(100, wait_s=0.05)
    assert budget.take_now(80)
    with pytest.raises(Overloaded) as info:
        await budget.take(30)
    assert info.value.message == NO_ROOM
    assert budget.take_now(20)  # the queue is empty again
    assert budget.used == 100


async def test_a_body_over_the_whole_budget_is_refused_at_once() -> None:
    budget = MemoryBudget(100, wait_s=60.0)
    assert budget.take_now(50)
    with pytest.raises(Overloaded) as info:
        await asyncio.wait_for(budget.take(101), 1.0)
    assert info.value.message == NEVER_FITS


async def test_a_cancelled_waiter_takes_nothing_and_uncovers_the_ones_behind() -> None:
    budget = MemoryBudget(100, wait_s=5.0)
    assert budget.take_now(50)
    big = asyncio.create_task(budget.take(80))
    await asyncio.sleep(0)
    small = asyncio.create_task(budget.take(40))
    await asyncio.sleep(0)
    big.cancel()
    await asyncio.wait_for(small, 1.0)
    assert budget.used == 90
