"""The benchmark's httpx client keeps the seam's contract: no httpx error escapes unmapped,
and a request to the simulator comes back whole."""

from __future__ import annotations

import httpx
import pytest

from benchmarks.httpx_upstream import HTTPX_ERRORS, HttpxUpstream
from proxy.upstream.base import UpstreamSettings
from sim.app import create_simulator_app
from tests.servers import LiveServer
from tests.upstream.test_aiohttp import subclasses


@pytest.mark.parametrize(
    "exc_type",
    sorted(subclasses(httpx.HTTPError) | {httpx.HTTPError}, key=lambda t: t.__name__),
)
def test_every_httpx_error_is_mapped(exc_type: type) -> None:
    assert any(issubclass(exc_type, foreign) for foreign, _ in HTTPX_ERRORS)


@pytest.mark.anyio
@pytest.mark.integration
async def test_send_returns_the_reply() -> None:
    with LiveServer(create_simulator_app("serverless")) as server:
        upstream = HttpxUpstream(
            UpstreamSettings(
                origin=server.url,
                connect_timeout_s=1.0,
                total_timeout_s=5.0,
                pool_size=4,
                decompress=True,
            )
        )
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
