"""The fleet's gate window: two replicas (Cutovers) publishing into one store, SQLite or a
real redis-server, each judging and showing what both served since the step."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.admin.views import cutover_view
from proxy.config import ProxyConfig
from proxy.cutover import Cutover
from proxy.cutover.redisstore import RedisStore
from proxy.cutover.sqlitestore import SqliteStore
from proxy.cutover.store import StateStore
from proxy.models import Backend
from tests.cutover.factory import Clock, config
from tests.redis_server import MISSING, RedisServer, available

pytestmark = pytest.mark.anyio
_prefixes = itertools.count()
SLOT_S = 10.0


def fleet_config(min_samples: int = 300, keep: int = 50, **gates: Any) -> ProxyConfig:
    return config(
        {
            "iris": {
                "serverless_percent": 5,
                "shadow_percent": 100,
                "rollout": {
                    "steps": [5, 25, 100],
                    "interval": "60s",
                    "gates": {"error_rate": {"max": 0.1, "min_samples": min_samples}, **gates},
                },
            }
        },
        reporting={"slot": f"{SLOT_S:g}s"},
        shadow={"keep_mismatches": keep},
    )


Fleet = Callable[..., Awaitable[list[Cutover]]]


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Fleet]:
    """`fleet(cfg, clock, n=2)`: n started replicas `a`, `b`, … on one store."""
    made: list[Cutover] = []
    if request.param == "sqlite":
        path = str(tmp_path / "state.sqlite3")

        def store() -> StateStore:
            return SqliteStore(path)
    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"fleet-{next(_prefixes)}"

        def store() -> StateStore:
            return RedisStore(url, prefix=prefix)

    async def build(cfg: ProxyConfig, clock: Clock, n: int = 2) -> list[Cutover]:
        out = []
        for name in "abcdef"[:n]:
            cutover = Cutover(
                cfg, store(), clock=clock, rng=random.Random(0), poll_s=3600, replica=name
            )
            await cutover.start()
            made.append(cutover)
            out.append(cutover)
        return out

    yield build
    for cutover in made:
        await cutover.aclose()


def feed(cutover: Cutover, ok: int, errors: int = 0, seconds: float = 0.01) -> None:
    for _ in range(ok):
        cutover.count_call("iris", Backend.SERVERLESS, 200, seconds)
    for _ in range(errors):
        cutover.count_call("iris", Backend.SERVERLESS, 503, seconds)


async def next_slot(clock: Clock, *replicas: Cutover) -> None:
    """Let the slot close and every replica publish it (what each poll does)."""
    clock.now += SLOT_S
    for replica in replicas:
        await replica.windows.publish()


async def test_the_gate_sees_the_sum_across_replicas(fleet: Fleet) -> None:
    clock = Clock()
    a, b = await fleet(fleet_config(min_samples=300), clock)
    feed(a, ok=150)
    feed(b, ok=150)
    clock.now += 60  # the interval has passed; both slots closed
    await a.windows.publish()
    await a.tick()  # b has not published yet: 150 of 300
    assert a.weight("iris") == 5
    action = a.last_action("iris")
    assert action is not None
    assert action.kind == "hold"
    assert "150 of 300 samples" in action.reason

    await b.windows.publish()
    await a.tick()
    assert a.weight("iris") == 25
    await b.refresh()
    assert b.weight("iris") == 25
    assert [e.action for e in await a.history("iris")].count("advance") == 1


async def test_one_replica_alone_holds(fleet: Fleet) -> None:
    clock = Clock()
    a, b = await fleet(fleet_config(min_samples=300), clock)
    feed(a, ok=150)
    clock.now += 60
    await a.windows.publish()
    await b.windows.publish()
    await b.tick()
    assert b.weight("iris") == 5
    assert b.window("iris").serverless_calls == 150


async def test_the_replicas_open_slot_counts_at_once(fleet: Fleet) -> None:
    clock = Clock()
    (a,) = await fleet(fleet_config(min_samples=10), clock, n=1)
    feed(a, ok=10)  # nothing published yet: a single replica is as prompt as before
    assert a.window("iris").serverless_calls == 10
    clock.now += 60
    await a.tick()
    assert a.weight("iris") == 25


async def test_every_replica_shows_the_same_fleet_window(fleet: Fleet) -> None:
    clock = Clock()
    a, b = await fleet(fleet_config(), clock)
    feed(a, ok=40, errors=2, seconds=0.010)
    feed(b, ok=60, seconds=0.200)
    a.count_call("iris", Backend.LEGACY, 200, 0.05)
    await next_slot(clock, a, b)
    views = []
    for replica in (a, b):
        await replica.read_window("iris")
        views.append(cutover_view(replica, "iris")["window"])
    assert views[0] == views[1]
    window = views[0]
    assert (window["serverless_calls"], window["serverless_errors"]) == (102, 2)
    assert window["legacy_calls"] == 1
    assert window["serverless_p99_ms"] == pytest.approx(200, rel=1e-3)
    assert window["shared"] is True
    assert sorted(window["replicas"]) == ["a", "b"]
    assert window["replicas"]["a"]["serverless_calls"] == 42
    assert window["replicas"]["b"]["serverless_calls"] == 60
    assert window["replicas"]["a"]["serverless_p99_ms"] == pytest.approx(10, rel=1e-3)


async def test_parity_merges_and_the_mismatch_list_stays_bounded(fleet: Fleet) -> None:
    clock = Clock()
    a, b = await fleet(fleet_config(keep=3), clock)
    for replica, name in ((a, "a"), (b, "b")):
        for i in range(5):
            replica.count_shadow("iris", "match")
            replica.count_shadow("iris", "value_mismatch")
            replica.count_mismatch("iris", {"at": clock.now + i, "request_id": f"{name}{i}"})
        replica.count_shadow("iris", "shadow_error")
        replica.count_shadow("iris", "dropped")
        clock.now += 0.5
    await next_slot(clock, a, b)
    for replica in (a, b):
        await replica.read_window("iris")
        fleet_window = replica.fleet_window("iris")
        assert fleet_window.parity == {
            "match": 10,
            "shape_mismatch": 0,
            "value_mismatch": 10,
            "status_mismatch": 0,
            "shadow_error": 2,
            "dropped": 2,
        }
        assert (fleet_window.stats.parity_samples, fleet_window.stats.parity_matches) == (20, 10)
        # keep_mismatches: 3 over the fleet, the newest by time whoever kept them.
        assert [m["request_id"] for m in fleet_window.mismatches] == ["b3", "a4", "b4"]


async def test_a_step_starts_the_fleet_window_again(fleet: Fleet) -> None:
    clock = Clock()
    a, b = await fleet(fleet_config(min_samples=20), clock)
    feed(a, ok=20)
    feed(b, ok=20)
    clock.now += 60
    await b.windows.publish()
    await a.tick()
    assert a.weight("iris") == 25
    await b.refresh()
    # b's slots at 5% are in the store, but evidence for 5% says nothing about 25%.
    await b.windows.publish()
    await a.read_window("iris")
    assert a.window("iris").serverless_calls == 0
    feed(b, ok=7)
    await next_slot(clock, b)
    await a.read_window("iris")
    assert a.window("iris").serverless_calls == 7


async def test_old_slots_leave_the_window_and_the_store(fleet: Fleet) -> None:
    clock = Clock()
    a, b = await fleet(fleet_config(), clock)
    feed(b, ok=5)
    await next_slot(clock, b)
    await a.read_window("iris")
    assert a.window("iris").serverless_calls == 5
    clock.now += 70  # past the 60 s window and the slot's time to live
    await a.read_window("iris")
    assert a.window("iris").serverless_calls == 0
    feed(b, ok=1)
    await next_slot(clock, b)  # publishing drops (SQLite) what expired
    keys, _ = await a.store.window_slots("iris", 0.0, ())
    if isinstance(a.store, SqliteStore):
        assert len(keys) == 1


@pytest.mark.redis
async def test_without_the_store_the_gates_judge_this_replicas_own_window() -> None:
    if not available():
        pytest.skip(MISSING)
    server = RedisServer()
    server.__enter__()
    clock = Clock()
    made = []
    try:
        prefix = f"gone-{next(_prefixes)}"
        for name in "ab":
            cutover = Cutover(
                fleet_config(min_samples=300),
                RedisStore(server.url, prefix=prefix),
                clock=clock,
                poll_s=3600,
                replica=name,
            )
            await cutover.start()
            made.append(cutover)
        a, b = made
        feed(b, ok=200)
        await next_slot(clock, b)
        await a.read_window("iris")
        assert a.window("iris").serverless_calls == 200
        feed(a, ok=50, errors=50)
        server.halt()
        await a.tick()  # the store is out: a judges its own 100 calls, and does not crash
        view = cutover_view(a, "iris")["window"]
        assert view["shared"] is False
        assert view["serverless_calls"] == 100
        assert list(view["replicas"]) == ["a"]
        assert await a.windows.publish() == 0
    finally:
        for cutover in made:
            await cutover.aclose()
        server.__exit__(None, None, None)


async def test_an_unreadable_slot_is_skipped_and_said_once(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    a, b = await fleet(fleet_config(), clock)
    feed(b, ok=4)
    await next_slot(clock, b)
    await b.store.publish_window(
        "iris", "c|5@0|1", clock.now - SLOT_S, {"replica": "c"}, clock.now, 70.0
    )
    for _ in range(3):
        await a.read_window("iris")
    assert a.window("iris").serverless_calls == 4
    unreadable = [r for r in caplog.records if "unreadable window slot" in r.getMessage()]
    assert len(unreadable) == 1
