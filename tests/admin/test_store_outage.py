"""The admin API while the state store is out: a rollback answers 202 and is in force at
once, other changes answer 503 in the admin shape, reads keep working; when Redis is back
both replicas (two apps on one real redis-server, stopped and started by its PID) agree.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from proxy.app import create_app
from proxy.config import ProxyConfig, parse_config
from proxy.cutover.redisstore import RedisStore
from tests.admin.test_api import AUTH, SPLIT, SPLIT_CT, TOKEN, sim_total
from tests.redis_server import RedisServer, restartable_redis  # noqa: F401 (the fixture)
from tests.servers import LiveServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.redis]
DEADLINE_S = 10.0


def redis_config(serverless: LiveServer, legacy: LiveServer, url: str) -> ProxyConfig:
    return parse_config(
        {
            "backends": {"serverless": {"url": serverless.url}, "legacy": {"url": legacy.url}},
            "models": {"iris": {"serverless_percent": 100}},
            "client_key": {"header": "X-Client-Id"},
            "state": url,
            "logging": {"access_log": False},
        },
        {"SERVING_PROXY_ADMIN_TOKEN": TOKEN},
    )


@contextlib.asynccontextmanager
async def replicas(config: ProxyConfig) -> AsyncIterator[tuple[httpx.AsyncClient, ...]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for _ in range(2):
            manager = await stack.enter_async_context(LifespanManager(create_app(config)))
            transport = httpx.ASGITransport(app=manager.app, client=("10.1.2.3", 5555))
            clients.append(
                await stack.enter_async_context(
                    httpx.AsyncClient(transport=transport, base_url="http://proxy")
                )
            )
        yield tuple(clients)


async def view(client: httpx.AsyncClient) -> dict[str, object]:
    r = await client.get("/admin/models/iris", headers=AUTH)
    assert r.status_code == 200, r.text
    data: dict[str, object] = r.json()
    return data


async def test_rollback_with_redis_stopped_works_and_every_replica_converges(
    serverless: LiveServer, legacy: LiveServer, redis: RedisServer
) -> None:
    async with replicas(redis_config(serverless, legacy, redis.url)) as (a, b):
        assert (await view(a))["persisted"] is True
        redis.halt()

        started = time.monotonic()
        r = await a.post("/admin/models/iris/rollback", headers=AUTH, json={"reason": "bad"})
        answered_s = time.monotonic() - started
        assert r.status_code == 202, r.text
        body = r.json()
        assert (body["serverless_percent"], body["persisted"]) == (0, False)
        assert {"model", "shadow_percent", "source", "rollout", "window", "parity"} <= set(body)
        # In force on this replica at once: a request goes to legacy.
        before = await sim_total(legacy)
        scored = await a.post(
            "/model/iris/1/invocations",
            content=SPLIT,
            headers={"content-type": SPLIT_CT, "x-client-id": "c1"},
        )
        assert scored.status_code == 200
        assert await sim_total(legacy) == before + 1

        # Any other change is a 503 in the admin shape; reads and readiness stay up.
        for client in (a, b):
            r = await client.put(
                "/admin/models/iris", headers=AUTH, json={"serverless_percent": 50}
            )
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "state_unavailable"
            r = await client.get("/admin/models/iris/history", headers=AUTH)
            assert (r.status_code, r.json()["error"]) == (503, "state_unavailable")
            assert (await client.get("/admin/models", headers=AUTH)).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
        assert (await view(a))["persisted"] is False

        redis.start()
        restarted = time.monotonic()
        with anyio.fail_after(DEADLINE_S):
            while True:
                views = [await view(a), await view(b)]
                if all((v["serverless_percent"], v["persisted"]) == (0, True) for v in views):
                    break
                await anyio.sleep(0.02)
        converged_s = time.monotonic() - restarted
        print(
            f"202 in {answered_s * 1000:.1f} ms; both replicas agree "
            f"{converged_s * 1000:.0f} ms after redis-server restarted (poll 250 ms)"
        )
        store = RedisStore(redis.url)
        try:
            assert (await store.load())["iris"].data["serverless_percent"] == 0
        finally:
            await store.aclose()
        r = await b.put("/admin/models/iris", headers=AUTH, json={"serverless_percent": 5})
        assert (r.status_code, r.json()["persisted"]) == (200, True)


async def test_a_pause_without_a_rollout_is_still_a_400_with_redis_stopped(
    serverless: LiveServer, legacy: LiveServer, redis: RedisServer
) -> None:
    async with replicas(redis_config(serverless, legacy, redis.url)) as (a, _):
        redis.halt()
        r = await a.post("/admin/models/iris/pause", headers=AUTH)
        assert (r.status_code, r.json()["error"]) == (400, "bad_change")
