"""Shadowing against backends on real loopback sockets, and the runner's own rules.

The app runs in-process; the backends are simulators (with fault knobs) or a tiny server
that answers differently. Waiting for a shadow result polls the admin API under a
deadline: the assertions are about order and counts, never durations.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.app import create_app
from proxy.config import ProxyConfig, parse_config
from proxy.config.cutover import ShadowConfig
from proxy.exchange import Inbound
from proxy.models import Backend, ModelRef, Reply
from proxy.shadow.job import ShadowJob
from proxy.shadow.mirror import decoded_body
from proxy.shadow.runner import Shadow
from tests.secretwatch import secret
from tests.servers import LiveServer

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.usefixtures("reset_simulators"),
]

TOKEN = secret("shadow-test-token-0123456789abcdef0123")
AUTH = {"authorization": f"Bearer {TOKEN}"}
SPLIT = b'{"columns": ["a", "b"], "data": [[1, 2.5], [3, 4]]}'
HEADERS = {"content-type": "application/json; format=pandas-split"}
DEADLINE_S = 15.0

INBOUND = Inbound(
    ModelRef("iris", "1", "1", "iris"),
    "/model/iris/1/invocations",
    "/model/iris/1/invocations",
    "",
    None,
    [("content-type", "application/json")],
    b"[1]",
    "r1",
)


def answering(body: bytes) -> Starlette:
    """A serverless backend whose model answers `body` to everything."""

    async def invocations(request: Request) -> Response:
        await request.body()
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", invocations, methods=["POST"])])


async def faults(server: LiveServer, **knobs: Any) -> None:
    async with httpx.AsyncClient() as c:
        (await c.put(server.url + "/_sim/faults", json=knobs)).raise_for_status()


@pytest.fixture(params=["process", "inline"])
def isolation(request: pytest.FixtureRequest) -> str:
    """Where the shadow calls run (`shadow.isolation`): the behaviour is the same."""
    value: str = request.param
    return value


def make_config(
    serverless_url: str,
    legacy: LiveServer,
    *,
    shadow: dict[str, Any] | None = None,
    isolation: str = "process",
    **iris: Any,
) -> ProxyConfig:
    return parse_config(
        {
            "backends": {"serverless": {"url": serverless_url}, "legacy": {"url": legacy.url}},
            "models": {"iris": {"serverless_percent": 0, "shadow_percent": 100, **iris}},
            "shadow": {"isolation": isolation, **(shadow or {})},
        },
        {"SERVING_PROXY_ADMIN_TOKEN": TOKEN},
    )


@asynccontextmanager
async def proxy(config: ProxyConfig) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(config)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("10.1.2.3", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            yield client


async def view(client: httpx.AsyncClient) -> dict[str, Any]:
    data: dict[str, Any] = (await client.get("/admin/models/iris", headers=AUTH)).json()
    return data


async def settled(client: httpx.AsyncClient, results: int) -> dict[str, Any]:
    """The model view once `results` shadow results are in (or the deadline passed)."""
    with anyio.move_on_after(DEADLINE_S):
        while True:
            v = await view(client)
            parity = v["parity"]
            if parity["compared"] + parity["shadow_error"] >= results:
                return v
            await anyio.sleep(0.02)
    return await view(client)


async def invoke(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/model/iris/1/invocations", content=SPLIT, headers=HEADERS)


async def test_the_primary_answer_does_not_wait_for_a_slow_shadow(
    serverless: LiveServer, legacy: LiveServer, isolation: str
) -> None:
    # Slow enough that a loaded machine cannot finish the shadow call before the view below
    # is read; the primary answer must still come back at once.
    await faults(serverless, delay_ms=4000)
    async with proxy(make_config(serverless.url, legacy, isolation=isolation)) as client:
        r = await invoke(client)
        assert (r.status_code, r.json()) == (200, [3.5, 7.0])
        during = await view(client)
        # The answer is out, and the 4 s shadow call has not finished.
        assert during["shadow"]["in_flight"] == 1
        assert during["parity"]["compared"] == 0
        after = await settled(client, 1)
    assert after["parity"]["match"] == 1
    assert after["shadow"]["in_flight"] == 0


async def test_saturation_drops_and_counts(
    serverless: LiveServer, legacy: LiveServer, isolation: str
) -> None:
    await faults(serverless, delay_ms=4000)
    config = make_config(serverless.url, legacy, shadow={"max_concurrency": 2}, isolation=isolation)
    async with proxy(config) as client:
        for _ in range(5):
            assert (await invoke(client)).status_code == 200
        v = await view(client)
        assert (v["shadow"]["in_flight"], v["parity"]["dropped"]) == (2, 3)
        v = await settled(client, 2)
    assert (v["parity"]["match"], v["parity"]["dropped"]) == (2, 3)


async def test_a_mismatch_names_the_differing_field(legacy: LiveServer, isolation: str) -> None:
    with LiveServer(answering(b'{"predictions": [3.5, 7.5]}')) as other:
        async with proxy(make_config(other.url, legacy, isolation=isolation)) as client:
            r = await invoke(client)
            assert r.json() == [3.5, 7.0]  # the client's answer is the primary's, untouched
            v = await settled(client, 1)
    assert v["parity"]["value_mismatch"] == 1
    (mismatch,) = v["mismatches"]
    assert mismatch["request_id"] == r.headers["x-request-id"]
    assert (mismatch["verdict"], mismatch["path"]) == ("value_mismatch", "$[1]")
    assert (mismatch["primary"], mismatch["shadow"]) == (7.0, 7.5)
    assert mismatch["primary_backend"] == "legacy"
    assert "request" not in mismatch  # no payload unless the config allows it


async def test_payloads_are_kept_only_when_allowed(legacy: LiveServer, isolation: str) -> None:
    with LiveServer(answering(b'{"predictions": [3.5, 7.5]}')) as other:
        config = make_config(other.url, legacy, shadow={"keep_payloads": True}, isolation=isolation)
        async with proxy(config) as client:
            await invoke(client)
            v = await settled(client, 1)
    (mismatch,) = v["mismatches"]
    assert mismatch["request"].encode() == SPLIT
    assert mismatch["shadow_body"] == "[3.5, 7.5]"


@pytest.mark.parametrize(
    ("answer", "compare", "result"),
    [
        pytest.param(b'{"predictions": [3.5000001, 7.0]}', {}, "match", id="within-tolerance"),
        pytest.param(
            b'{"predictions": [3.5000001, 7.0]}',
            {"rel_tol": 0, "abs_tol": 0},
            "value_mismatch",
            id="no-tolerance",
        ),
        pytest.param(b'{"predictions": [7.0, 3.5]}', {"ignore_order": True}, "match", id="order"),
        pytest.param(b'{"predictions": [3.5]}', {}, "shape_mismatch", id="shape"),
    ],
)
async def test_compare_settings_per_model(
    legacy: LiveServer, answer: bytes, compare: dict[str, Any], result: str
) -> None:
    with LiveServer(answering(answer)) as other:
        async with proxy(make_config(other.url, legacy, compare=compare)) as client:
            await invoke(client)
            v = await settled(client, 1)
    assert v["parity"][result] == 1


@pytest.mark.parametrize(
    ("knobs", "result"),
    [
        pytest.param({"status": 503}, "status_mismatch", id="status"),
        pytest.param({"drop": True}, "shadow_error", id="connection-dropped"),
    ],
)
async def test_a_failing_shadow_never_fails_the_primary(
    serverless: LiveServer, legacy: LiveServer, knobs: dict[str, Any], result: str, isolation: str
) -> None:
    await faults(serverless, **knobs)
    async with proxy(make_config(serverless.url, legacy, isolation=isolation)) as client:
        r = await invoke(client)
        assert (r.status_code, r.json()) == (200, [3.5, 7.0])
        v = await settled(client, 1)
    assert v["parity"][result] == 1


async def test_serverless_primary_is_shadowed_to_legacy(
    serverless: LiveServer, legacy: LiveServer, isolation: str
) -> None:
    async with proxy(
        make_config(serverless.url, legacy, serverless_percent=100, isolation=isolation)
    ) as client:
        r = await invoke(client)
        assert r.json() == [3.5, 7.0]
        v = await settled(client, 1)
    assert v["parity"]["match"] == 1
    async with httpx.AsyncClient() as c:
        # Both backends saw the request: the legacy one as the client's bytes.
        for server in (serverless, legacy):
            assert (await c.get(server.url + "/_sim/stats")).json()["total"] == 1
        sent = (await c.get(legacy.url + "/_sim/stats")).json()["last_request"]
    assert sent["body"].encode() == SPLIT


async def test_shadow_share_zero_sends_nothing(serverless: LiveServer, legacy: LiveServer) -> None:
    async with proxy(make_config(serverless.url, legacy, shadow_percent=0)) as client:
        for _ in range(3):
            await invoke(client)
        v = await view(client)
    assert v["parity"]["compared"] == v["parity"]["dropped"] == 0
    async with httpx.AsyncClient() as c:
        assert (await c.get(serverless.url + "/_sim/stats")).json()["total"] == 0


# --- the parts without sockets ---------------------------------------------------------------


async def test_submit_never_raises_and_listeners_hear_drops() -> None:
    release = asyncio.Event()

    async def call(inbound: Inbound, backend: Backend) -> Reply:
        await release.wait()
        return Reply(200, b"[1]")

    shadow = Shadow(ShadowConfig(max_concurrency=1), call)
    heard: list[tuple[str, str]] = []
    compared = asyncio.Event()

    def listen(model: str, result: str) -> None:
        heard.append((model, result))
        if result != "dropped":
            compared.set()

    shadow.on_result.append(listen)
    job = ShadowJob("iris", "r1", Backend.LEGACY, Backend.SERVERLESS, Reply(200, b"[1]"), INBOUND)
    assert shadow.submit(job)
    assert not shadow.submit(job)
    assert heard == [("iris", "dropped")]
    release.set()
    await compared.wait()
    assert heard[-1] == ("iris", "match")
    assert shadow.parity("iris").to_json()["rate"] == 1.0
    await shadow.aclose()


async def test_a_drop_is_counted_even_when_a_listener_raises() -> None:
    release = asyncio.Event()

    async def call(inbound: Inbound, backend: Backend) -> Reply:
        await release.wait()
        return Reply(200, b"[1]")

    shadow = Shadow(ShadowConfig(max_concurrency=1), call)

    def broken(model: str, result: str) -> None:
        raise RuntimeError("listener bug")

    job = ShadowJob("iris", "r1", Backend.LEGACY, Backend.SERVERLESS, Reply(200, b"[1]"), INBOUND)
    assert shadow.submit(job)
    shadow.on_result.append(broken)
    assert shadow.drop_if_full("iris")  # full: dropped, and nothing raised
    assert shadow.parity("iris").dropped == 1
    release.set()
    await shadow.aclose()


async def test_compressed_pass_through_bodies_are_compared_decoded() -> None:
    import gzip

    reply = Reply(200, gzip.compress(b"[1, 2]"), None, (("Content-Encoding", "gzip"),))
    assert decoded_body(reply) == b"[1, 2]"
    assert decoded_body(Reply(200, b"raw", None, (("content-encoding", "gzip"),))) == b"raw"
