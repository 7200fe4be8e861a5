"""Whether a failed call may have reached the upstream (`UpstreamConnectError.sent`), as
both clients tell it on real loopback sockets: only a request never written may be sent
again (`proxy.resilience`) or elsewhere (spill-back)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from proxy.errors import UpstreamConnectError
from proxy.upstream.aiohttp import AiohttpUpstream
from proxy.upstream.base import Upstream, UpstreamSettings
from proxy.upstream.http1 import HttptoolsUpstream
from tests.upstream.test_http1 import Request, scripted, settings

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

BOTH = pytest.mark.parametrize(
    "factory", [HttptoolsUpstream, AiohttpUpstream], ids=["httptools", "aiohttp"]
)
CONNECT_TIMEOUT_S = 0.3


async def failure(upstream: Upstream) -> UpstreamConnectError:
    try:
        with pytest.raises(UpstreamConnectError) as caught:
            await upstream.send("POST", "/invocations", [], b"{}")
    finally:
        await upstream.aclose()
    return caught.value


@pytest.fixture
def refusing_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose listen queue is full, so a new connection is never accepted: the SYN
    goes unanswered until the client's connect timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=1.0)
    try:
        yield port
    finally:
        filler.close()
        listener.close()


@BOTH
async def test_a_refused_connection_was_not_sent(
    factory: Callable[[UpstreamSettings], Upstream], refusing_port: int
) -> None:
    error = await failure(factory(settings(f"http://127.0.0.1:{refusing_port}")))
    assert error.sent is False


@BOTH
async def test_a_connect_timeout_was_not_sent(
    factory: Callable[[UpstreamSettings], Upstream], full_backlog: int
) -> None:
    base = settings(f"http://127.0.0.1:{full_backlog}", total=5.0)
    quick = UpstreamSettings(
        base.origin, CONNECT_TIMEOUT_S, base.total_timeout_s, base.pool_size, base.decompress
    )
    error = await failure(factory(quick))
    assert error.sent is False


@BOTH
async def test_a_request_read_then_dropped_may_have_been_processed(
    factory: Callable[[UpstreamSettings], Upstream],
) -> None:
    async def drop(request: Request) -> None:
        return None  # read the request, then close without a word

    async with scripted(drop) as (url, script):
        error = await failure(factory(settings(url)))
    assert error.sent is True
    assert len(script.requests) == 1
