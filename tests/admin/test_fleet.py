"""`GET /admin/leader`, `GET /admin/replicas` and the `stale` flag: two apps on one real
redis-server (stopped and started by its PID), and one on its in-memory store."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from proxy import __version__
from proxy.app import build_runtime, create_app
from proxy.config import ProxyConfig, parse_config
from tests.admin.test_api import AUTH, TOKEN
from tests.redis_server import MISSING, RedisServer, available
from tests.servers import LiveServer

pytestmark = pytest.mark.anyio
RECORD_FIELDS = {
    "replica_id",
    "host",
    "version",
    "state_version",
    "last_heartbeat",
    "in_flight",
    "leader",
    "stale",
}


def fleet_config(
    serverless: LiveServer, legacy: LiveServer, replica_id: str, state: str | None = None
) -> ProxyConfig:
    return parse_config(
        {
            "backends": {"serverless": {"url": serverless.url}, "legacy": {"url": legacy.url}},
            "models": {"iris": {"serverless_percent": 100}},
            "state": state,
            "server": {"replica_id": replica_id},
            "cutover": {"leader_ttl_s": 3},
            "logging": {"access_log": False},
        },
        {"SERVING_PROXY_ADMIN_TOKEN": TOKEN},
    )


@contextlib.asynccontextmanager
async def serving(*configs: ProxyConfig) -> AsyncIterator[tuple[httpx.AsyncClient, ...]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for config in configs:
            manager = await stack.enter_async_context(LifespanManager(create_app(config)))
            transport = httpx.ASGITransport(app=manager.app, client=("10.1.2.3", 5555))
            clients.append(
                await stack.enter_async_context(
                    httpx.AsyncClient(transport=transport, base_url="http://proxy")
                )
            )
        yield tuple(clients)


async def until(check: Callable[[], Any], limit_s: float) -> float:
    """Seconds until the awaitable `check()` returns true (fails the test past `limit_s`)."""
    started = time.monotonic()
    with anyio.fail_after(limit_s):
        while True:
            if await check():
                return time.monotonic() - started
            await anyio.sleep(0.05)


@pytest.fixture
def redis() -> Any:
    if not available():
        pytest.skip(MISSING)
    with RedisServer() as server:
        yield server


async def test_alone_on_its_own_store_a_replica_leads_and_lists_itself(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    async with serving(fleet_config(serverless, legacy, "solo")) as (client,):
        leader = (await client.get("/admin/leader", headers=AUTH)).json()
        assert set(leader) == {"replica_id", "since", "fencing_token"}
        assert leader["replica_id"] == "solo"
        assert isinstance(leader["since"], float)
        assert leader["fencing_token"] >= 1
        body = (await client.get("/admin/replicas", headers=AUTH)).json()
        assert (body["replica_id"], body["store_reachable"]) == ("solo", True)
        [record] = body["replicas"]
        assert set(record) == RECORD_FIELDS
        assert record["replica_id"] == "solo"
        assert record["version"] == __version__
        assert (record["leader"], record["stale"], record["in_flight"]) == (True, False, 0)
        ready = (await client.get("/readyz")).json()
        assert ready == {"status": "ready", "replica_id": "solo", "stale": False}


@pytest.mark.parametrize("path", ["/admin/leader", "/admin/replicas"])
async def test_the_fleet_routes_need_the_admin_token(
    serverless: LiveServer, legacy: LiveServer, path: str
) -> None:
    config = fleet_config(serverless, legacy, "solo")
    async with serving(config, config.model_copy(update={"secrets": {}})) as (guarded, open_):
        assert (await guarded.get(path)).status_code == 401
        wrong = {"authorization": "Bearer " + "x" * 40}
        assert (await guarded.get(path, headers=wrong)).status_code == 401
        assert (await guarded.get(path + "?token=" + TOKEN, headers=AUTH)).status_code == 400
        assert (await guarded.post(path, headers=AUTH)).status_code == 405
        # No admin token configured: the route does not even show that it exists.
        assert (await open_.get(path, headers=AUTH)).status_code == 404


@pytest.mark.redis
async def test_two_replicas_one_leader_both_listed(
    serverless: LiveServer, legacy: LiveServer, redis: RedisServer
) -> None:
    configs = [fleet_config(serverless, legacy, name, redis.url) for name in ("pa", "pb")]
    async with serving(*configs) as (a, b):
        leaders = [(await c.get("/admin/leader", headers=AUTH)).json() for c in (a, b)]
        assert leaders[0] == leaders[1]
        assert leaders[0]["replica_id"] == "pa"

        async def both_listed() -> bool:
            body = (await b.get("/admin/replicas", headers=AUTH)).json()
            return [r["replica_id"] for r in body["replicas"]] == ["pa", "pb"]

        await until(both_listed, 5)
        records = (await a.get("/admin/replicas", headers=AUTH)).json()["replicas"]
        assert [r["leader"] for r in records] == [True, False]
        assert all(set(r) == RECORD_FIELDS and not r["stale"] for r in records)
        assert records[0]["state_version"] == records[1]["state_version"]


@pytest.mark.redis
async def test_without_redis_a_replica_serves_ready_and_stale_and_catches_up(
    serverless: LiveServer, legacy: LiveServer, redis: RedisServer
) -> None:
    configs = [fleet_config(serverless, legacy, name, redis.url) for name in ("pa", "pb")]
    async with serving(*configs) as (a, b):
        redis.halt()

        async def stale_everywhere() -> bool:
            details = [(await c.get("/readyz")) for c in (a, b)]
            assert all(d.status_code == 200 for d in details)  # still in the Service
            return all(d.json()["stale"] for d in details)

        took = await until(stale_everywhere, 5)
        print(f"stale reported {took * 1000:.0f} ms after redis-server stopped")
        body = (await a.get("/admin/replicas", headers=AUTH)).json()
        assert body["store_reachable"] is False
        [own] = body["replicas"]
        assert (own["replica_id"], own["stale"]) == ("pa", True)
        r = await a.get("/admin/leader", headers=AUTH)
        assert (r.status_code, r.json()["error"]) == (503, "state_unavailable")
        # It keeps serving its last table.
        scored = await a.post(
            "/model/iris/1/invocations",
            content=b'{"columns": ["x"], "data": [[1]]}',
            headers={"content-type": "application/json"},
        )
        assert scored.status_code == 200

        redis.start()

        async def fresh_everywhere() -> bool:
            details = [(await c.get("/readyz")).json() for c in (a, b)]
            return not any(d["stale"] for d in details)

        took = await until(fresh_everywhere, 5)
        print(f"every replica fresh {took * 1000:.0f} ms after redis-server returned")

        async def listed_and_led() -> bool:
            body = (await b.get("/admin/replicas", headers=AUTH)).json()
            leader = (await b.get("/admin/leader", headers=AUTH)).json()
            names = [r["replica_id"] for r in body["replicas"]]
            return names == ["pa", "pb"] and leader["replica_id"] in ("pa", "pb")

        await until(listed_and_led, 5)


def test_the_workers_of_one_replica_are_members_of_their_own(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    one = fleet_config(serverless, legacy, "pod-a")
    assert build_runtime(one).cutover.replica_id == "pod-a"
    two = one.model_copy(update={"server": one.server.model_copy(update={"workers": 2})})
    runtime = build_runtime(two)
    assert runtime.replica_id == "pod-a"  # the access log and /readyz name the replica
    assert runtime.cutover.replica_id == f"pod-a#{os.getpid()}"
