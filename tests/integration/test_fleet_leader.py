"""Three real proxy processes on one real redis-server: one rollout leader, a change made
through one in force on the others in milliseconds, and a new leader within the TTL when
the leader is killed with SIGKILL. Every process is stopped by its PID."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.proxy_process import ProxyProcess
from tests.redis_server import MISSING, RedisServer, available
from tests.servers import LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.redis]
TOKEN = "fleet-admin-token-0123456789abcdef0123"
AUTH = {"authorization": f"Bearer {TOKEN}"}
TTL_S = 2.0
CHANGES = 20


@pytest.fixture
def fleet(
    serverless: LiveServer, legacy: LiveServer, tmp_path: Path
) -> Iterator[list[ProxyProcess]]:
    if not available():
        pytest.skip(MISSING)
    with RedisServer() as redis, ExitStack() as stack:
        replicas = []
        for name in ("pa", "pb", "pc"):
            doc = {
                "backends": {"serverless": {"url": serverless.url}, "legacy": {"url": legacy.url}},
                "models": {"iris": {"serverless_percent": 0}},
                "state": redis.url,
                "server": {"replica_id": name, "graceful_shutdown_s": 1},
                "cutover": {"leader_ttl_s": TTL_S},
                "logging": {"access_log": False},
            }
            proxy = ProxyProcess(doc, tmp_path, env={"SERVING_PROXY_ADMIN_TOKEN": TOKEN})
            replicas.append(stack.enter_context(proxy))
        yield replicas


def get(proxy: ProxyProcess, path: str) -> Any:
    r = httpx.get(proxy.url + path, headers=AUTH, timeout=5)
    r.raise_for_status()
    return r.json()


def until(condition: Callable[[], bool], limit_s: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit_s, "not within the deadline"
        time.sleep(0.02)
    return time.monotonic() - started


def test_one_leader_changes_pushed_and_a_new_leader_after_a_kill(
    fleet: list[ProxyProcess],
) -> None:
    leaders = {get(p, "/admin/leader")["replica_id"] for p in fleet}
    assert leaders == {"pa"}  # the first started, and every replica says so

    def all_listed() -> bool:
        records = get(fleet[2], "/admin/replicas")["replicas"]
        return [r["replica_id"] for r in records] == ["pa", "pb", "pc"]

    until(all_listed, 5)
    records = get(fleet[1], "/admin/replicas")["replicas"]
    assert [r["leader"] for r in records] == [True, False, False]
    assert not any(r["stale"] for r in records)
    for proxy in fleet:
        ready = httpx.get(proxy.url + "/readyz").json()
        assert ready["stale"] is False

    # A change through pb, in force on pa and pc (read through their admin API).
    took = []
    with httpx.Client(headers=AUTH, timeout=5) as client:
        for i in range(CHANGES):
            percent = i % 10 * 10 + 5
            started = time.perf_counter()
            r = client.put(
                fleet[1].url + "/admin/models/iris", json={"serverless_percent": percent}
            )
            r.raise_for_status()
            for other in (fleet[0], fleet[2]):
                while (
                    client.get(other.url + "/admin/models/iris").json()["serverless_percent"]
                    != percent
                ):
                    assert time.perf_counter() - started < 2
            took.append(time.perf_counter() - started)
    p50 = statistics.median(took)
    print(
        f"across processes, {CHANGES} changes: p50 {p50 * 1e3:.1f} ms, max "
        f"{max(took) * 1e3:.1f} ms (each: the PUT, then both others read until they agree)"
    )
    assert p50 < 0.1

    # kill -9 of the leader: no release, no goodbye.
    leader = fleet[0]
    assert leader.process is not None
    leader.process.kill()
    leader.process.wait(5)

    def led_by_another() -> bool:
        views = [get(p, "/admin/leader")["replica_id"] for p in fleet[1:]]
        return views[0] == views[1] and views[0] in ("pb", "pc")

    took_s = until(led_by_another, TTL_S + 2)
    print(f"a new leader {took_s * 1e3:.0f} ms after kill -9 of the leader (ttl {TTL_S} s)")
    new = get(fleet[1], "/admin/leader")
    assert new["fencing_token"] > 1
