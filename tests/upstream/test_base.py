"""The upstream seam's contract, for every client `server.upstream_client` can choose,
against real loopback servers (architecture §1.5, httpx test_timeouts)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.errors import (
    ProxyError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from proxy.upstream.aiohttp import AiohttpUpstream
from proxy.upstream.base import Upstream, UpstreamSettings
from proxy.upstream.http1 import HttptoolsUpstream
from sim.app import create_simulator_app
from sim.faults import Faults
from sim.serve import serve_broken
from tests.servers import LiveServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

# The whole seam contract holds for each client.
PRODUCT_CLIENTS = pytest.mark.parametrize(
    "factory", [HttptoolsUpstream, AiohttpUpstream], ids=["httptools", "aiohttp"]
)


def settings(origin: str, *, total: float = 5.0) -> UpstreamSettings:
    return UpstreamSettings(
        origin=origin, connect_timeout_s=1.0, total_timeout_s=total, pool_size=4, decompress=True
    )


@pytest.fixture(scope="module")
def serverless() -> LiveServer:
    with LiveServer(create_simulator_app("serverless")) as server:
        yield server


@PRODUCT_CLIENTS
async def test_send_returns_the_reply(
    serverless: LiveServer, factory: Callable[[UpstreamSettings], Upstream]
) -> None:
    upstream = factory(settings(serverless.url))
    try:
        reply = await upstream.send(
            "POST",
            "/invocations",
            [("content-type", "application/json")],
            b'{"inputs": [[1, 2], [3, 4]]}',
        )
    finally:
        await upstream.aclose()
    assert reply.status == 200
    assert reply.content_type == "application/json"
    assert reply.body == b'{"predictions": [3.0, 7.0]}'
    assert reply.elapsed_s > 0


@PRODUCT_CLIENTS
async def test_slow_upstream_is_a_timeout(factory: Callable[[UpstreamSettings], Upstream]) -> None:
    app = create_simulator_app("serverless", faults=Faults(delay_ms=2000))
    with LiveServer(app) as server:
        upstream = factory(settings(server.url, total=0.2))
        try:
            with pytest.raises(UpstreamTimeout):
                await upstream.send("POST", "/invocations", [], b'{"inputs": [1]}')
        finally:
            await upstream.aclose()


@PRODUCT_CLIENTS
async def test_closed_port_is_a_connect_error(
    factory: Callable[[UpstreamSettings], Upstream],
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    upstream = factory(settings(f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(UpstreamConnectError):
            await upstream.send("POST", "/invocations", [], b"{}")
    finally:
        await upstream.aclose()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("reset", UpstreamConnectError),
        ("garbage", UpstreamProtocolError),
        ("hang", UpstreamTimeout),
    ],
)
@PRODUCT_CLIENTS
async def test_broken_servers(
    mode: str, expected: type[ProxyError], factory: Callable[[UpstreamSettings], Upstream]
) -> None:
    async with serve_broken(mode) as url:  # type: ignore[arg-type]
        upstream = factory(settings(url, total=0.5))
        try:
            with pytest.raises(expected):
                await upstream.send("POST", "/invocations", [], b"{}")
        finally:
            await upstream.aclose()


@PRODUCT_CLIENTS
async def test_no_cookie_is_replayed_across_requests(
    factory: Callable[[UpstreamSettings], Upstream],
) -> None:
    """GHSA-7vwr-g6pm-9hc8: a shared pool must not carry one client's cookie to the next."""

    async def endpoint(request: Request) -> Response:
        response = JSONResponse({"cookie": request.headers.get("cookie")})
        response.set_cookie("session", "client-a")
        return response

    app = Starlette(routes=[Route("/c", endpoint, methods=["POST"])])
    with LiveServer(app) as server:
        upstream = factory(settings(server.url))
        try:
            first = await upstream.send("POST", "/c", [], b"")
            second = await upstream.send("POST", "/c", [], b"")
        finally:
            await upstream.aclose()
    assert first.header("set-cookie") is not None
    assert second.body == b'{"cookie":null}'


@PRODUCT_CLIENTS
async def test_the_client_adds_no_headers_of_its_own(
    factory: Callable[[UpstreamSettings], Upstream],
) -> None:
    async def endpoint(request: Request) -> Response:
        return JSONResponse(sorted(request.headers.keys()))

    app = Starlette(routes=[Route("/h", endpoint, methods=["POST"])])
    with LiveServer(app) as server:
        upstream = factory(settings(server.url))
        try:
            reply = await upstream.send("POST", "/h", [("x-a", "1")], b"abc")
        finally:
            await upstream.aclose()
    names = set(httpx.Response(200, content=reply.body).json())
    assert "content-type" not in names
    assert "user-agent" not in names
    assert "accept-encoding" not in names
    assert "x-a" in names
