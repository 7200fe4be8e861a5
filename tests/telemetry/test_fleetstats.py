"""The report over the fleet: two apps on one real redis-server (stopped by its PID), each
serving part of the traffic; `GET /admin/report` on either covers both, the legacy client
inventory included, and says so when the store is out."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import httpx
import pytest

from proxy.config import ProxyConfig, parse_config
from proxy.telemetry.fleetstats import replica_of
from tests.admin.test_api import AUTH, TOKEN
from tests.admin.test_fleet import serving, until
from tests.redis_server import MISSING, RedisServer, available
from tests.servers import LiveServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]
BODY = b'{"columns": ["a", "b"], "data": [[1, 2]]}'


def config(serverless: LiveServer, legacy: LiveServer, name: str, state: str) -> ProxyConfig:
    return parse_config(
        {
            "backends": {"serverless": {"url": serverless.url}, "legacy": {"url": legacy.url}},
            "models": {"iris": {"serverless_percent": 50, "stages": {"Production": "1"}}},
            "state": state,
            "server": {"replica_id": name},
            "client_key": {"header": "X-Client-Id"},
            "reporting": {"slot": "1s", "window": "1m", "show_client_header": True},
            "logging": {"access_log": False},
        },
        {"SERVING_PROXY_ADMIN_TOKEN": TOKEN},
    )


async def score(client: httpx.AsyncClient, who: str, times: int) -> None:
    headers = {"content-type": "application/json", "x-client-id": who}
    for _ in range(times):
        reply = await client.post("/model/iris/1/invocations", content=BODY, headers=headers)
        assert reply.status_code == 200, reply.text


async def report(client: httpx.AsyncClient) -> dict[str, Any]:
    reply = await client.get("/admin/report", headers=AUTH)
    assert reply.status_code == 200
    data: dict[str, Any] = reply.json()
    return data


def requests_by_client(data: dict[str, Any]) -> dict[str, int]:
    return {row["client"]: row["requests"] for row in data["models"]["iris"]["clients"]}


def test_a_member_id_names_its_replica() -> None:
    assert replica_of("pod-a") == "pod-a"
    assert replica_of("pod-a#4242") == "pod-a"


@pytest.mark.usefixtures("reset_simulators")
async def test_the_report_on_any_replica_covers_the_fleet(
    serverless: LiveServer, legacy: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    if not available():
        pytest.skip(MISSING)
    caplog.set_level(logging.WARNING, logger="serving_proxy")
    with RedisServer() as redis:
        configs = [config(serverless, legacy, name, redis.url) for name in ("pa", "pb")]
        async with serving(*configs) as (a, b):
            await score(a, "app-1", 30)
            await score(b, "app-1", 20)
            await score(b, "app-2", 10)

            async def both_counted() -> bool:
                views = [await report(c) for c in (a, b)]
                return all(v["models"]["iris"]["requests"] == 60 for v in views)

            # Each replica publishes every slot (1 s): within two, the other's are in.
            await until(both_counted, 5)
            for client in (a, b):
                data = await report(client)
                assert (data["replicas"], data["replicas_reachable"]) == (2, True)
                assert requests_by_client(data) == {"app-1": 50, "app-2": 10}
                backends = data["models"]["iris"]["backends"]
                assert backends["legacy"]["requests"] + backends["serverless"]["requests"] == 60

            # The store out: each report is its replica's own figures, and says so; each
            # replica says once that it cannot publish, however many slots it tries.
            redis.halt()
            data = await report(a)
            assert (data["replicas"], data["replicas_reachable"]) == (1, False)
            assert data["models"]["iris"]["requests"] == 30
            await anyio.sleep(3.5)
            said = [r for r in caplog.records if "report statistics not shared" in r.message]
            assert sorted(r.levelname for r in said) == ["WARNING", "WARNING"]


@pytest.mark.usefixtures("reset_simulators")
async def test_a_replica_that_stops_leaves_the_report(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    if not available():
        pytest.skip(MISSING)
    with RedisServer() as redis:
        first = config(serverless, legacy, "pa", redis.url)
        async with serving(first) as (a,):
            await score(a, "app-1", 5)
            async with serving(config(serverless, legacy, "pb", redis.url)) as (b,):
                await score(b, "app-1", 7)

                async def counted(total: int) -> bool:
                    return bool((await report(a))["models"]["iris"]["requests"] == total)

                await until(lambda: counted(12), 5)
            # pb stopped gracefully: its figures are gone at once, not after their TTL.
            data = await report(a)
            assert (data["replicas"], data["models"]["iris"]["requests"]) == (1, 5)
