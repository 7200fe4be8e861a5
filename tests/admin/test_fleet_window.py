"""Two proxies (apps in-process) on one real redis-server, serving real simulators: the
admin model view and `status` show the same fleet window from either, with the
`replicas` breakdown, once their slots are published."""

from __future__ import annotations

import io
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager

from proxy.app import create_app
from proxy.cli.cutover import print_status
from proxy.config import ProxyConfig, parse_config
from tests.servers import LiveServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration, pytest.mark.redis]

TOKEN = "adm1n-t0ken-for-tests-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SPLIT = b'{"columns": ["a", "b"], "data": [[1, 2.5], [3, 4]]}'
SPLIT_CT = "application/json; format=pandas-split"
DEADLINE_S = 10.0
_databases = itertools.count(1)


def fleet_config(
    serverless: LiveServer, legacy: LiveServer, redis_url: str, db: int, replica: str
) -> ProxyConfig:
    return parse_config(
        {
            "backends": {"serverless": {"url": serverless.url}, "legacy": {"url": legacy.url}},
            # Legacy answers the clients; every request is also sent to serverless and compared.
            "models": {"iris": {"serverless_percent": 0, "shadow_percent": 100}},
            "state": redis_url.rsplit("/", 1)[0] + f"/{db}",
            "server": {"replica_id": replica},
            "reporting": {"slot": "500ms", "window": "60s"},
            "shadow": {"isolation": "inline"},
            "admin": {"token_name": "ops"},
        },
        {"SERVING_PROXY_ADMIN_TOKEN": TOKEN},
    )


@asynccontextmanager
async def replica(config: ProxyConfig) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(config)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("10.1.2.3", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            yield client


async def score(client: httpx.AsyncClient, n: int) -> None:
    for _ in range(n):
        response = await client.post(
            "/model/iris/1/invocations", content=SPLIT, headers={"content-type": SPLIT_CT}
        )
        assert response.status_code == 200


async def model(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/admin/models/iris", headers=AUTH)
    assert response.status_code == 200
    view: dict[str, Any] = response.json()
    return view


async def test_either_replica_shows_the_fleet_window(
    serverless: LiveServer, legacy: LiveServer, redis_url: str
) -> None:
    db = next(_databases)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(
            replica(fleet_config(serverless, legacy, redis_url, db, "proxy-a"))
        )
        b = await stack.enter_async_context(
            replica(fleet_config(serverless, legacy, redis_url, db, "proxy-b"))
        )
        await score(a, 3)
        await score(b, 5)
        # Each replica publishes a slot once it closed (500 ms) at its next poll (250 ms).
        start = time.monotonic()
        while True:
            views = [await model(a), await model(b)]
            if all(v["window"]["parity_samples"] == 8 for v in views):
                break
            assert time.monotonic() - start < DEADLINE_S, [v["window"] for v in views]
            await anyio.sleep(0.2)
        # The report behind the dashboard shows the same window for each model.
        reports = [
            (await c.get("/admin/report", headers=AUTH)).json()["models"]["iris"]["gate_window"]
            for c in (a, b)
        ]

    for view in views:
        window = view["window"]
        assert window["shared"] is True
        assert window["legacy_calls"] == 8
        assert window["serverless_calls"] == 8  # the shadow calls
        assert sorted(window["replicas"]) == ["proxy-a", "proxy-b"]
        assert window["replicas"]["proxy-a"]["legacy_calls"] == 3
        assert window["replicas"]["proxy-b"]["legacy_calls"] == 5
        assert view["parity"]["compared"] == 8
    assert views[0]["window"] == views[1]["window"]
    assert views[0]["parity"] == views[1]["parity"]
    for gate_window in reports:
        assert {k: v for k, v in gate_window.items() if k != "parity"} == views[0]["window"]
        assert gate_window["parity"] == views[0]["parity"]
    # `status` prints the fleet's parity, the same from either replica.
    lines = []
    for view in views:
        out = io.StringIO()
        print_status([view], out)
        lines.append(out.getvalue().splitlines()[1])
    assert lines[0] == lines[1]
    assert "of 8" in lines[0]
