"""The store goes away: a rollback still works here at once, and every replica converges
on it when the store is back. Two Cutovers share a real redis-server, stopped and started
by its PID; each test drives the replicas' polls itself (`Cutover.poll`)."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.config import ProxyConfig
from proxy.cutover import Cutover
from proxy.cutover.commands import WeightChange
from proxy.cutover.redisstore import RedisStore
from proxy.cutover.rollout import RolloutStatus
from proxy.cutover.store import StateError
from proxy.models import Backend, ModelRef
from proxy.routing import ClientKey
from tests.cutover.factory import Clock, config
from tests.redis_server import RedisServer, restartable_redis  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.anyio, pytest.mark.redis]
IRIS = ModelRef("iris", "1", "1", "iris")
DEADLINE_S = 10.0
ROLLOUT = {"steps": [25, 50, 100], "interval": "60s", "on_failure": "last_good"}
_prefixes = itertools.count()


Replicas = Callable[[ProxyConfig], Awaitable[tuple[Cutover, Cutover]]]


@pytest.fixture
async def replicas(redis: RedisServer) -> AsyncIterator[Replicas]:
    made: list[Cutover] = []
    prefix = f"outage-{next(_prefixes)}"

    async def build(cfg: ProxyConfig) -> tuple[Cutover, Cutover]:
        pair = []
        for _ in range(2):
            cutover = Cutover(cfg, RedisStore(redis.url, prefix=prefix), clock=Clock(), poll_s=3600)
            cutover.live.rng = random.Random(0)
            await cutover.start()
            made.append(cutover)
            pair.append(cutover)
        return pair[0], pair[1]

    yield build
    for cutover in made:
        await cutover.aclose()


async def converge(*replicas: Cutover, done: Callable[[Cutover], bool]) -> float:
    """Poll every replica until `done` holds for each; the seconds it took."""
    start = time.monotonic()
    while not all(done(r) for r in replicas):
        assert time.monotonic() - start < DEADLINE_S, [r.state("iris") for r in replicas]
        for r in replicas:
            await r.poll()
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def routes_to(cutover: Cutover, clients: range = range(50)) -> set[Backend]:
    return {cutover.decide(IRIS, ClientKey("header", f"c{i}"), []).primary for i in clients}


async def test_a_rollback_applies_here_at_once_and_is_stored_when_redis_returns(
    redis: RedisServer, replicas: Replicas
) -> None:
    a, b = await replicas(config({"iris": {"serverless_percent": 100}}))
    assert routes_to(a) == {Backend.SERVERLESS}
    redis.halt()

    started = time.monotonic()
    state = await a.rollback("iris", "ops", "store down, model bad")
    applied_s = time.monotonic() - started
    assert state.serverless_percent == 0
    assert routes_to(a) == {Backend.LEGACY}
    assert a.persisted("iris") is False
    # The other replica cannot know yet; neither can take any other change.
    assert b.weight("iris") == 100
    with pytest.raises(StateError):
        await b.set_weights("iris", WeightChange(serverless_percent=50), "ops")
    with pytest.raises(StateError):
        await a.set_weights("iris", WeightChange(serverless_percent=50), "ops")
    await a.poll()
    assert (a.weight("iris"), a.persisted("iris")) == (0, False)

    redis.start()
    took = await converge(a, b, done=lambda r: r.weight("iris") == 0 and r.persisted("iris"))
    print(
        f"applied here in {applied_s * 1000:.1f} ms; converged {took * 1000:.0f} ms after restart"
    )
    assert routes_to(b) == {Backend.LEGACY}
    check = RedisStore(redis.url, prefix=a.store._prefix)  # type: ignore[attr-defined]
    try:
        stored = (await check.load())["iris"]
        newest = (await check.audit("iris"))[0]
    finally:
        await check.aclose()
    assert stored.data["serverless_percent"] == 0
    assert (newest.action, newest.actor, newest.reason) == (
        "rollback",
        "ops",
        "store down, model bad",
    )


async def test_the_rollback_wins_over_what_the_store_says_after_the_restart(
    redis: RedisServer, replicas: Replicas
) -> None:
    """Rolled back 50 -> 25 (last good) here while Redis was out; whatever the restarted
    Redis holds (50 from before, or nothing), both replicas end at 25, rolled back."""
    a, b = await replicas(config({"iris": {"serverless_percent": 25, "rollout": ROLLOUT}}))
    await a.promote("iris", "ops")
    await converge(b, done=lambda r: r.weight("iris") == 50)
    redis.halt()
    await a.rollback("iris", "ops", "parity dropped")
    assert (a.weight("iris"), a.rollout_status("iris")) == (25, "rolled_back")
    redis.start()
    await converge(a, b, done=lambda r: r.weight("iris") == 25 and r.persisted("iris"))
    assert b.rollout_status("iris") == str(RolloutStatus.ROLLED_BACK)
    # Stored once: more polls change nothing, and a later change works as before.
    for r in (a, b, a, b):
        await r.poll()
    assert next(e.action for e in await a.history("iris", 2)) == "rollback"
    await b.resume("iris", "ops")
    await converge(a, done=lambda r: r.rollout_status("iris") == "running")


async def test_a_pause_applies_here_at_once_and_is_stored_when_redis_returns(
    redis: RedisServer, replicas: Replicas
) -> None:
    a, b = await replicas(config({"iris": {"serverless_percent": 25, "rollout": ROLLOUT}}))
    redis.halt()
    await a.pause("iris", "ops", "look at the parity first")
    assert (a.rollout_status("iris"), a.persisted("iris")) == ("paused", False)
    with pytest.raises(StateError):
        await a.promote("iris", "ops")
    redis.start()
    await converge(
        a, b, done=lambda r: r.rollout_status("iris") == "paused" and r.persisted("iris")
    )


async def test_a_failing_gate_rolls_back_here_while_redis_is_out(
    redis: RedisServer, replicas: Replicas
) -> None:
    cfg = config(
        {
            "iris": {
                "serverless_percent": 50,
                "rollout": {**ROLLOUT, "gates": {"error_rate": {"max": 0.1, "min_samples": 5}}},
            }
        }
    )
    a, b = await replicas(cfg)
    redis.halt()
    for _ in range(10):
        a.count_call("iris", Backend.SERVERLESS, 503, 0.01)
    await a.poll()  # the store does not answer; the gates are judged all the same
    assert (a.weight("iris"), a.rollout_status("iris"), a.persisted("iris")) == (
        25,
        "rolled_back",
        False,
    )
    redis.start()
    await converge(a, b, done=lambda r: r.weight("iris") == 25 and r.persisted("iris"))
    assert b.state("iris").source == "rollout"


async def test_the_weight_moves_before_the_store_is_even_tried(
    redis: RedisServer, replicas: Replicas
) -> None:
    a, _ = await replicas(config({"iris": {"serverless_percent": 100}}))
    redis.halt()
    task = asyncio.ensure_future(a.rollback("iris", "ops"))
    await asyncio.sleep(0)  # the rollback ran up to its first wait on the store
    assert not task.done()
    assert routes_to(a) == {Backend.LEGACY}
    await task
