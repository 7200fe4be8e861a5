"""The admin API in-process, backends real simulators on loopback.

Refusals first (no token, wrong token, token in the query string, never logged), then
reads and changes, then that a change really moves traffic.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from proxy.app import create_app
from proxy.config import ProxyConfig, parse_config
from tests.secretwatch import secret
from tests.servers import LiveServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TOKEN = secret("adm1n-t0ken-for-tests-0123456789abcdef")
AUTH = {"authorization": f"Bearer {TOKEN}"}
SPLIT = b'{"columns": ["a", "b"], "data": [[1, 2.5], [3, 4]]}'
SPLIT_CT = "application/json; format=pandas-split"
ROLLOUT = {"steps": [5, 25, 100], "interval": "1h", "gates": {"error_rate": {"min_samples": 50}}}


def make_config(
    serverless: LiveServer, legacy: LiveServer, *, token: str | None = TOKEN, **models: Any
) -> ProxyConfig:
    environ = {} if token is None else {"SERVING_PROXY_ADMIN_TOKEN": token}
    return parse_config(
        {
            "backends": {"serverless": {"url": serverless.url}, "legacy": {"url": legacy.url}},
            "models": models or {"iris": {"serverless_percent": 10}},
            "admin": {"token_name": "ops"},
            "client_key": {"header": "X-Client-Id"},
        },
        environ,
    )


async def sim_reset(server: LiveServer) -> None:
    async with httpx.AsyncClient() as c:
        await c.post(server.url + "/_sim/reset")


async def sim_total(server: LiveServer) -> int:
    async with httpx.AsyncClient() as c:
        total: int = (await c.get(server.url + "/_sim/stats")).json()["total"]
        return total


async def sim_last_body(server: LiveServer) -> bytes:
    async with httpx.AsyncClient() as c:
        body: str = (await c.get(server.url + "/_sim/stats")).json()["last_request"]["body"]
        return body.encode()


@asynccontextmanager
async def proxy(config: ProxyConfig) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(config)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("10.1.2.3", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            yield client


@pytest.fixture
async def client(serverless: LiveServer, legacy: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with proxy(make_config(serverless, legacy)) as c:
        yield c


ADMIN_CALLS = [
    pytest.param("GET", "/admin/models", id="list"),
    pytest.param("GET", "/admin/models/iris", id="get"),
    pytest.param("PUT", "/admin/models/iris", id="put"),
    pytest.param("DELETE", "/admin/models/iris", id="delete"),
    pytest.param("POST", "/admin/models/iris/rollback", id="rollback"),
    pytest.param("GET", "/admin/models/iris/history", id="history"),
    pytest.param("GET", "/admin/audit", id="audit"),
    pytest.param("GET", "/admin/models/nope", id="unknown-model"),
]


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
async def test_without_a_token_the_admin_api_does_not_exist(
    serverless: LiveServer, legacy: LiveServer, method: str, path: str
) -> None:
    async with proxy(make_config(serverless, legacy, token=None)) as c:
        unknown = await c.get("/no/such/path")
        r = await c.request(method, path, headers=AUTH, json={"serverless_percent": 100})
    assert r.status_code == 404
    assert (r.headers["content-type"], r.content) == (
        unknown.headers["content-type"],
        unknown.content,
    )


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"authorization": "Bearer wrong"}, id="wrong-token"),
        pytest.param({"authorization": f"Bearer {TOKEN}x"}, id="longer-token"),
        pytest.param({"authorization": f"Basic {TOKEN}"}, id="not-bearer"),
        pytest.param({"authorization": TOKEN}, id="no-scheme"),
    ],
)
@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS[:5])
async def test_wrong_credentials_are_refused(
    client: httpx.AsyncClient, headers: dict[str, str], method: str, path: str
) -> None:
    r = await client.request(method, path, headers=headers, json={"serverless_percent": 100})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"] == "unauthorized"
    assert (await client.get("/admin/models/iris", headers=AUTH)).json()["serverless_percent"] == 10


@pytest.mark.parametrize("param", ["token", "access_token", "Api_Key", "authorization"])
async def test_a_token_in_the_query_string_is_refused(
    client: httpx.AsyncClient, param: str
) -> None:
    r = await client.put(
        f"/admin/models/iris?{param}={TOKEN}", headers=AUTH, json={"serverless_percent": 100}
    )
    assert r.status_code == 400
    assert r.json()["error"] == "credentials_in_query"
    assert TOKEN not in r.text
    r = await client.get("/admin/models/iris", headers=AUTH)
    assert r.json()["serverless_percent"] == 10


async def test_the_token_never_reaches_a_log_line(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await client.get(f"/admin/models?token={TOKEN}", headers=AUTH)
    await client.get("/admin/models", headers=AUTH)
    await client.put("/admin/models/iris", headers=AUTH, json={"serverless_percent": 20})
    await client.put("/admin/models/iris", headers=AUTH, json={"serverless_percent": 200})
    await client.get("/admin/models", headers={"authorization": f"Bearer {TOKEN}-wrong"})
    await client.post("/admin/models/iris/rollback", headers=AUTH)
    # The proxy's own lines (the test client's httpx logger prints its URLs, query and all).
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("serving_proxy")]
    assert any('"status":401' in line for line in lines), "the access log wrote nothing"
    assert not [line for line in lines if TOKEN in line]


async def test_list_and_get(client: httpx.AsyncClient) -> None:
    listed = (await client.get("/admin/models", headers=AUTH)).json()["models"]
    assert [m["model"] for m in listed] == ["iris"]
    one = (await client.get("/admin/models/iris", headers=AUTH)).json()
    for key in ("model", "serverless_percent", "shadow_percent", "rollout", "parity"):
        assert key in one
    assert (one["serverless_percent"], one["shadow_percent"], one["rollout"]) == (10, 0, None)
    assert one["mismatches"] == []


async def test_put_applies_and_is_audited(client: httpx.AsyncClient) -> None:
    r = await client.put(
        "/admin/models/iris",
        headers=AUTH,
        json={"serverless_percent": 25, "shadow_percent": 5, "reason": "step 2"},
    )
    assert r.status_code == 200
    assert (r.json()["serverless_percent"], r.json()["shadow_percent"]) == (25, 5)
    history = (await client.get("/admin/models/iris/history", headers=AUTH)).json()["history"]
    latest = history[0]
    assert (latest["actor"], latest["action"], latest["reason"]) == ("ops", "set", "step 2")
    assert (latest["old"]["serverless_percent"], latest["new"]["serverless_percent"]) == (10, 25)
    audit = (await client.get("/admin/audit?limit=1", headers=AUTH)).json()["audit"]
    assert audit == [latest]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        pytest.param(b'{"serverless_percent": 101}', "serverless_percent", id="range"),
        pytest.param(b'{"serverless_percent": 5, "colour": 1}', "colour", id="unknown"),
        pytest.param(b"{}", "give serverless_percent", id="empty"),
        pytest.param(b"not json", "JSON", id="not-json"),
    ],
)
async def test_a_bad_put_answers_400_and_keeps_the_state(
    client: httpx.AsyncClient, body: bytes, needle: str
) -> None:
    r = await client.put("/admin/models/iris", headers=AUTH, content=body)
    assert r.status_code == 400
    assert needle in r.json()["message"]
    assert (await client.get("/admin/models/iris", headers=AUTH)).json()["serverless_percent"] == 10


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("PUT", "/admin/models/wine", 404, id="unknown-model"),
        pytest.param("DELETE", "/admin/models/iris", 405, id="method"),
        pytest.param("POST", "/admin/models/iris/promote", 400, id="promote-without-rollout"),
        pytest.param("GET", "/admin/audit?limit=0", 400, id="bad-limit"),
    ],
)
async def test_other_refusals(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    r = await client.request(method, path, headers=AUTH, json={"serverless_percent": 1})
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"


async def test_rollout_moves(serverless: LiveServer, legacy: LiveServer) -> None:
    config = make_config(serverless, legacy, iris={"serverless_percent": 5, "rollout": ROLLOUT})
    async with proxy(config) as c:
        view = (await c.get("/admin/models/iris", headers=AUTH)).json()
        assert view["rollout"]["status"] == "running"
        assert view["rollout"]["next_step"] == 25
        r = await c.post("/admin/models/iris/promote", headers=AUTH, json={"reason": "looks good"})
        assert (r.json()["serverless_percent"], r.json()["rollout"]["status"]) == (25, "running")
        r = await c.post("/admin/models/iris/pause", headers=AUTH)
        assert r.json()["rollout"]["status"] == "paused"
        r = await c.post("/admin/models/iris/rollback", headers=AUTH, json={"to": "last_good"})
        assert (r.json()["serverless_percent"], r.json()["rollout"]["status"]) == (
            5,
            "rolled_back",
        )
        r = await c.post("/admin/models/iris/rollback", headers=AUTH, json={"to": "sideways"})
        assert r.status_code == 400
        history = (await c.get("/admin/models/iris/history", headers=AUTH)).json()["history"]
        assert [e["action"] for e in history] == ["rollback", "pause", "promote", "seed"]


async def test_a_change_moves_traffic_and_legacy_bytes_pass_unchanged(
    client: httpx.AsyncClient, serverless: LiveServer, legacy: LiveServer
) -> None:
    # A body 1.30.1 accepts with odd spacing: the legacy server must get it byte for byte.
    body = b'{"columns": ["a", "b"],   "data": [[1, 2.5], [3, 4]]}'
    headers = {"content-type": SPLIT_CT, "x-client-id": "client-7"}
    for percent, side in ((0, legacy), (100, serverless)):
        await sim_reset(side)
        r = await client.put(
            "/admin/models/iris", headers=AUTH, json={"serverless_percent": percent}
        )
        assert r.status_code == 200
        r = await client.post("/model/iris/1/invocations", content=body, headers=headers)
        assert r.status_code == 200
        assert r.json() == [3.5, 7.0]
        assert await sim_total(side) == 1
        if side is legacy:
            assert await sim_last_body(side) == body


async def test_the_override_header_needs_a_listed_client(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    # Listed by what the client cannot choose (its address, 10.1.2.3 here), never by the
    # X-Client-Id it sends.
    for listed, expected in (("10.1.2.3", serverless), ("qa", legacy)):
        await _override_once(serverless, legacy, listed, expected)


async def _override_once(
    serverless: LiveServer, legacy: LiveServer, listed: str, expected: LiveServer
) -> None:
    config = make_config(serverless, legacy, iris={"serverless_percent": 0})
    config = config.model_copy(
        update={"route_override": config.route_override.model_copy(update={"clients": (listed,)})}
    )
    async with proxy(config) as c:
        for client_id in ("qa",):
            for server in (serverless, legacy):
                await sim_reset(server)
            r = await c.post(
                "/model/iris/1/invocations",
                content=SPLIT,
                headers={
                    "content-type": SPLIT_CT,
                    "x-client-id": client_id,
                    "x-serving-proxy-route": "serverless",
                },
            )
            assert r.status_code == 200
            assert await sim_total(expected) == 1
