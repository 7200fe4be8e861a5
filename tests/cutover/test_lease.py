"""The rollout lease and fenced writes, one suite against SQLite and a real redis-server;
then leadership among three Cutovers on one Redis: one leads, a former leader's step is
refused by the store, and another replica takes over within the TTL."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest

from proxy.cutover import Cutover
from proxy.cutover.redisstore import RedisStore
from proxy.cutover.store import FencingError, Lease, StateStore
from proxy.models import Backend
from tests.cutover import test_store as suite
from tests.cutover.factory import ROLLOUT, Clock, config

pytestmark = pytest.mark.anyio
_prefixes = itertools.count()
TTL_S = 1.0
# The store suite's fixtures: each test below runs on SQLite and on Redis.
factory, store, entry = suite.factory, suite.store, suite.entry


async def until(condition: Callable[[], bool], limit_s: float, step_s: float = 0.01) -> float:
    """Seconds until `condition` holds (fails the test past `limit_s`)."""
    started = time.perf_counter()
    with anyio.fail_after(limit_s):
        while True:
            if condition():
                return time.perf_counter() - started
            await anyio.sleep(step_s)


async def test_one_holder_at_a_time_with_a_new_token_each_time(store: StateStore) -> None:
    first = await store.acquire_lease("a", 30)
    assert first is not None
    assert first.replica_id == "a"
    assert await store.acquire_lease("b", 30) is None
    assert await store.lease() == first
    assert await store.renew_lease(first, 30)
    await store.release_lease(first)
    assert await store.lease() is None
    second = await store.acquire_lease("b", 30)
    assert second is not None
    assert second.fencing_token > first.fencing_token
    # A lease given up or lost is renewed by no one but its holder.
    assert not await store.renew_lease(first, 30)
    await store.release_lease(first)  # not the holder's: nothing happens
    assert await store.lease() == second


async def test_an_expired_lease_passes_to_the_next(store: StateStore) -> None:
    old = await store.acquire_lease("a", 0.2)
    assert old is not None
    await anyio.sleep(0.3)
    new = await store.acquire_lease("b", 30)
    assert new is not None
    assert new.fencing_token > old.fencing_token
    assert not await store.renew_lease(old, 30)


async def test_a_stale_fencing_token_is_refused_and_nothing_is_written(
    store: StateStore,
) -> None:
    old = await store.acquire_lease("a", 0.2)
    assert old is not None
    assert await store.write_fenced("iris", None, {"serverless_percent": 5}, entry(), old)
    await anyio.sleep(0.3)  # "a" paused past its lease; "b" leads now
    new = await store.acquire_lease("b", 30)
    assert new is not None
    generation = await store.generation()
    with pytest.raises(FencingError):
        await store.write_fenced("iris", 1, {"serverless_percent": 25}, entry(), old)
    assert await store.generation() == generation
    assert (await store.load())["iris"].data == {"serverless_percent": 5}
    assert len(await store.audit("iris")) == 1
    # The leader's own write goes through, compare-and-set as ever.
    assert await store.write_fenced("iris", 1, {"serverless_percent": 25}, entry(), new)
    assert not await store.write_fenced("iris", 1, {"serverless_percent": 50}, entry(), new)


async def test_no_lease_no_fenced_write(store: StateStore) -> None:
    made_up = Lease("a", 1.0, 1)
    with pytest.raises(FencingError):
        await store.write_fenced("iris", None, {"serverless_percent": 5}, entry(), made_up)
    assert await store.load() == {}


async def test_heartbeats_are_listed_until_they_expire_or_leave(store: StateStore) -> None:
    await store.heartbeat("b", {"replica_id": "b"}, 30)
    await store.heartbeat("a", {"replica_id": "a"}, 0.2)
    assert [r["replica_id"] for r in await store.replicas()] == ["a", "b"]
    await anyio.sleep(0.3)
    assert [r["replica_id"] for r in await store.replicas()] == ["b"]
    await store.leave("b")
    assert await store.replicas() == []


async def test_statistics_are_kept_per_process_until_they_expire_or_are_dropped(
    store: StateStore,
) -> None:
    await store.publish_stats("b#12", {"t": 1.0, "slots": []}, 30)
    await store.publish_stats("a", {"t": 2.0, "slots": [1]}, 0.2)
    await store.publish_stats("a", {"t": 3.0, "slots": [2]}, 0.2)  # the newest wins
    assert await store.fleet_stats() == {
        "a": {"t": 3.0, "slots": [2]},
        "b#12": {"t": 1.0, "slots": []},
    }
    # Apart from the replica records, though keyed alike.
    assert await store.replicas() == []
    await anyio.sleep(0.3)
    assert list(await store.fleet_stats()) == ["b#12"]
    await store.drop_stats("b#12")
    assert await store.fleet_stats() == {}


# --- three replicas on one Redis ---------------------------------------------------------

Fleet = Callable[..., Awaitable[list[Cutover]]]


@pytest.fixture
async def fleet(redis_url: str) -> AsyncIterator[Fleet]:
    made: list[Cutover] = []
    prefix = f"lease-{next(_prefixes)}"

    async def build(count: int = 3, clock: Clock | None = None) -> list[Cutover]:
        cfg = config(
            {"iris": {"serverless_percent": 5, "rollout": ROLLOUT}},
            cutover={"leader_ttl_s": TTL_S},
        )
        for i in range(count):
            cutover = Cutover(
                cfg,
                RedisStore(redis_url, prefix=prefix),
                clock=clock or Clock(),
                poll_s=3600,  # the test ticks; the lease and heartbeat loops run
                replica=f"r{i}",
            )
            await cutover.start()
            made.append(cutover)
        return made[-count:]

    yield build
    for cutover in made:
        await cutover.aclose()


def leaders(replicas: list[Cutover]) -> list[str]:
    return [r.replica_id for r in replicas if r.leadership.leads()]


def feed(cutover: Cutover, ok: int) -> None:
    for _ in range(ok):
        cutover.count_call("iris", Backend.SERVERLESS, 200, 0.01)


@pytest.mark.redis
async def test_exactly_one_of_three_leads_and_the_store_agrees(fleet: Fleet) -> None:
    replicas = await fleet()
    for _ in range(10):
        assert leaders(replicas) == ["r0"]
        lease = await replicas[1].leader()
        assert lease is not None
        assert lease.replica_id == "r0"
        await anyio.sleep(TTL_S / 5)


@pytest.mark.redis
async def test_only_the_leader_steps_and_the_step_is_written_once(fleet: Fleet) -> None:
    clock = Clock()
    replicas = await fleet(clock=clock)
    clock.now += 60
    for r in replicas:
        feed(r, 20)
    for r in reversed(replicas):  # the followers judge first: they leave it to r0
        await r.tick()
    for r in replicas:
        await r.refresh()
        assert r.weight("iris") == 25
    history = await replicas[2].history("iris")
    assert [e.action for e in history].count("advance") == 1
    # The audit says where the step came from: the leader, under its lease's token.
    step = next(e for e in history if e.action == "advance")
    lease = await replicas[2].leader()
    assert lease is not None
    assert (step.replica, step.fencing_token) == ("r0", lease.fencing_token)


@pytest.mark.redis
async def test_a_paused_former_leader_cannot_write_a_step(fleet: Fleet) -> None:
    clock = Clock()
    replicas = await fleet(clock=clock)
    old, follower = replicas[0], replicas[1]
    assert old.leadership.leads()
    # r0 pauses (its loops stop, its belief does not); its lease is taken away meanwhile
    # and another replica takes the lead.
    await old._tasks.aclose()
    held = await old.leader()
    assert held is not None
    await old.store.release_lease(held)
    await follower.leadership.turn()
    assert follower.leadership.leads()
    assert old.leadership.leads()  # still believes it, within its local deadline
    # r0 wakes and judges a passing gate: the store refuses its step.
    clock.now += 60
    feed(old, 20)
    await old.tick()
    assert not old.leadership.leads()
    await old.refresh(force=True)
    assert old.weight("iris") == 5
    assert "advance" not in [e.action for e in await old.history("iris")]


@pytest.mark.redis
async def test_another_replica_leads_within_the_ttl_when_the_leader_stops(
    fleet: Fleet,
) -> None:
    replicas = await fleet()
    leader = replicas[0]
    assert leaders(replicas) == ["r0"]
    await leader._tasks.aclose()  # it stops renewing, as a killed process would
    took = await until(lambda: bool(leaders(replicas[1:])), TTL_S + 2)
    # By then r0 no longer believes it leads either: never two at once.
    assert not leader.leadership.leads()
    assert len(leaders(replicas[1:])) == 1
    print(f"takeover {took * 1000:.0f} ms after the leader stopped renewing (ttl {TTL_S} s)")
    assert took <= TTL_S + 1.0


@pytest.mark.redis
async def test_a_graceful_stop_hands_the_lead_over_at_once(fleet: Fleet) -> None:
    replicas = await fleet()
    await replicas[0].aclose()
    took = await until(lambda: bool(leaders(replicas[1:])), 2)
    print(f"handover {took * 1000:.0f} ms after a graceful stop")


@pytest.mark.redis
async def test_a_rollout_goes_on_under_the_next_leader_each_step_once(fleet: Fleet) -> None:
    clock = Clock()
    replicas = await fleet(clock=clock)
    first, rest = replicas[0], replicas[1:]
    clock.now += 60
    feed(first, 20)
    await first.tick()
    assert first.weight("iris") == 25
    await first._tasks.aclose()  # the leader dies mid-rollout, its lease held
    await until(lambda: bool(leaders(rest)), TTL_S + 2)
    [second] = [r for r in rest if r.leadership.leads()]
    await second.refresh()
    assert second.weight("iris") == 25  # it goes on from the stored step, not from 5%
    clock.now += 60
    feed(second, 20)
    for r in rest:
        await r.tick()
    await first.tick()  # the dead leader's belief has run out: it writes nothing
    for r in replicas:
        await r.refresh(force=True)
        assert r.weight("iris") == 50
    steps = [
        (e.old or {}).get("serverless_percent")
        for e in reversed(await second.history("iris"))
        if e.action == "advance"
    ]
    assert steps == [5, 25]
