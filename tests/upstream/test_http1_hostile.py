"""The upstream clients against servers that misbehave on purpose: raw asyncio (or thread)
sockets on 127.0.0.1 sending crafted bytes.

One test per way a reply could be mixed, cut, replayed or overgrown: bytes after a reply,
a reset mid-body, a request the server read and then dropped, an upstream restart against
a full pool, and compressed bodies that inflate past the cap.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from proxy.app import create_app
from proxy.config import parse_config
from proxy.errors import UpstreamConnectError, UpstreamProtocolError
from proxy.upstream import base, http1
from proxy.upstream.aiohttp import AiohttpUpstream
from proxy.upstream.base import Upstream, UpstreamSettings
from proxy.upstream.connection import Connection
from proxy.upstream.http1 import HttptoolsUpstream
from tests.upstream.test_http1 import OK, Request, always, client, encoded, scripted, settings
from tests.upstream.transports import FakeTransport

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

BOTH = pytest.mark.parametrize(
    "factory", [HttptoolsUpstream, AiohttpUpstream], ids=["httptools", "aiohttp"]
)
EVIL = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nEVIL"


@asynccontextmanager
async def pool(factory: Callable[[UpstreamSettings], Upstream], url: str, **kw: Any) -> Any:
    upstream = factory(settings(url, **kw))
    try:
        yield upstream
    finally:
        await upstream.aclose()


# --- 1. bytes after a complete reply ---------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [EVIL, EVIL[:20], b"\r\n", b"x"],
    ids=["a-second-reply", "a-partial-reply", "a-stray-crlf", "one-byte"],
)
async def test_bytes_after_a_reply_in_the_same_read_are_not_merged(tail: bytes) -> None:
    async def answer(request: Request) -> bytes:
        return OK + tail if request.connection == 1 else OK

    async with scripted(answer) as (url, script), client(url) as upstream:
        first = await upstream.send("POST", "/invocations", [], b"{}")
        assert (first.status, first.body) == (200, b"[]")
        assert upstream._idle == []  # retired, never pooled
        second = await upstream.send("POST", "/invocations", [], b"{}")
        assert (second.status, second.body) == (200, b"[]")
    assert [r.connection for r in script.requests] == [1, 2]


@pytest.mark.parametrize(
    "tail",
    [b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"x", b"\x00", b"H", b"\r\nH", b"\r\n\r\nHTTP/1.1 2"],
)
async def test_any_byte_after_the_reply_in_its_read_retires_the_connection(tail: bytes) -> None:
    # Reads ending in CR or LF take the split feed, others one feed that a new message or
    # a parse error betrays: either way the reply is whole and the connection not reused.
    loop = asyncio.get_running_loop()
    conn = Connection(lambda c: None, 1 << 20)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    waiter = conn.begin(loop, head_only=False)
    conn.data_received(OK + tail)
    assert waiter.done()
    assert waiter.exception() is None
    assert (conn.status, b"".join(conn.body)) == (200, b"[]")
    assert transport.aborted
    assert not conn.reusable


async def test_parsing_stops_at_the_end_of_the_reply_however_the_bytes_arrive() -> None:
    """Every split of `200 "[]"` + `503 "EVIL"` into two reads gives exactly the first
    reply, and a connection that is never reused."""
    loop = asyncio.get_running_loop()
    stream = OK + EVIL
    for cut in range(1, len(stream)):
        conn = Connection(lambda c: None, 1 << 20)
        conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        waiter = conn.begin(loop, head_only=False)
        for piece in (stream[:cut], stream[cut:]):
            if not conn.closed:
                conn.data_received(piece)
        assert waiter.done(), cut
        assert waiter.exception() is None, cut
        assert (conn.status, b"".join(conn.body)) == (200, b"[]"), cut
        assert not conn.reusable, cut


# --- 2. a body cut short ---------------------------------------------------------------


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # close with SO_LINGER 0: a TCP reset, not a FIN


@asynccontextmanager
async def cut_short(first: bytes, how: str) -> AsyncIterator[str]:
    """A server that sends `first`, lets the client read it, then resets or closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(first)
        await writer.drain()
        await asyncio.sleep(0.1)
        if how == "reset":
            _reset(writer)
        else:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


@pytest.mark.parametrize("how", ["reset", "eof"])
@pytest.mark.parametrize(
    "first",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n[]\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n[1",
    ],
    ids=["before-content-length", "before-the-last-chunk", "mid-chunk"],
)
@BOTH
async def test_a_body_cut_short_is_an_error(
    first: bytes, how: str, factory: Callable[[UpstreamSettings], Upstream]
) -> None:
    async with cut_short(first, how) as url, pool(factory, url) as upstream:
        with pytest.raises((UpstreamProtocolError, UpstreamConnectError)):
            await asyncio.wait_for(upstream.send("GET", "/", [], b""), 3)


async def test_a_reset_ends_a_body_delimited_by_the_connection_as_an_error() -> None:
    # No length and no chunks: only a clean close ends the body; a reset cuts it.
    async with cut_short(b"HTTP/1.1 200 OK\r\n\r\nabc", "reset") as url, client(url) as up:
        with pytest.raises((UpstreamProtocolError, UpstreamConnectError)):
            await asyncio.wait_for(up.send("GET", "/", [], b""), 3)
    async with cut_short(b"HTTP/1.1 200 OK\r\n\r\nabc", "eof") as url, client(url) as up:
        assert (await asyncio.wait_for(up.send("GET", "/", [], b""), 3)).body == b"abc"


# --- 3. a request the server read is never sent twice ----------------------------------


def _config(url: str, **backend: Any) -> Any:
    return parse_config(
        {
            "backends": {"serverless": {"url": url, "trust_env": False, **backend}},
            "models": {"iris": {"stages": {"Production": "3"}}},
        },
        {},
    )


async def test_the_model_runs_once_when_the_upstream_closes_after_reading() -> None:
    """Through the whole app: the first call is answered, the second is read by the
    upstream (the model ran) and the connection closed; the client gets 503 in 1.x shape
    and the upstream saw each request once."""
    answer_v2 = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n"
    answer_v2 += b'{"predictions": [1]}'

    async def answer(request: Request) -> bytes | None:
        return answer_v2 if len(script.requests) == 1 else None

    async with scripted(answer) as (url, script):
        app = create_app(_config(url))
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as c:
                body = b'{"columns": ["a"], "data": [[1]]}'
                headers = {"content-type": "application/json; format=pandas-split"}
                path = "/model/iris/Production/invocations"
                ok = await c.post(path, content=body, headers=headers)
                failed = await c.post(path, content=body, headers=headers)
    assert ok.status_code == 200
    assert failed.status_code in (502, 503)
    assert failed.json()["error_code"] in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR")
    assert len(script.requests) == 2
    assert [r.connection for r in script.requests] == [1, 1]


class _ThreadServer:
    """A blocking socket server in a thread, so it runs while the client's loop is held:
    connection 1 answers one request then closes; later ones answer every request."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[int] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        number = 0
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            number += 1
            threading.Thread(target=self._one, args=(sock, number), daemon=True).start()

    def _one(self, sock: socket.socket, number: int) -> None:
        with sock:
            buffer = b""
            while True:
                while b"\r\n\r\n{}" not in buffer:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer.split(b"\r\n\r\n{}", 1)[1]
                self.requests.append(number)
                sock.sendall(OK)
                if number == 1:
                    return  # answered, then closed while idle

    def close(self) -> None:
        self.listener.close()


async def test_a_pooled_connection_the_server_closed_is_not_written_to() -> None:
    """The server's FIN is in the socket but the loop, held, has not delivered it: the
    request must go on a new connection, not on the closed one."""
    server = _ThreadServer()
    try:
        async with client(server.url) as upstream:
            assert (await upstream.send("POST", "/invocations", [], b"{}")).status == 200
            time.sleep(0.2)  # noqa: ASYNC251 (hold the loop: the FIN arrives, undelivered)
            assert upstream._idle
            assert not upstream._idle[0].closed
            reply = await upstream.send("POST", "/invocations", [], b"{}")
    finally:
        server.close()
    assert reply.status == 200
    assert server.requests == [1, 2]


# --- 4. pool_size bounds open connections, across an upstream restart --------------------


class _Restartable:
    """An upstream that answers slowly and can crash (every connection reset) and come
    back on the same port; `most_open` counts connections open at once, per run."""

    def __init__(self) -> None:
        self.port = 0
        self.most_open: list[int] = []
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self.most_open.append(0)
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        self.most_open[-1] = max(self.most_open[-1], len(self._open))
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                await asyncio.sleep(0.03)
                writer.write(OK)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._open.discard(writer)
            writer.transport.abort()

    async def crash(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._open):
            _reset(writer)
        self._open.clear()
        await self._server.wait_closed()


async def test_pool_size_holds_across_an_upstream_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    live = 0
    most = 0

    class Counted(Connection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            nonlocal live, most
            live += 1
            most = max(most, live)
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            nonlocal live
            live -= 1
            super().connection_lost(exc)

    monkeypatch.setattr(http1, "Connection", Counted)
    upstream_server = _Restartable()
    url = await upstream_server.start()
    try:
        async with client(url, pool=4) as upstream:
            calls = [upstream.send("POST", "/invocations", [], b"{}") for _ in range(8)]
            assert all(r.status == 200 for r in await asyncio.gather(*calls))
            assert len(upstream._idle) == 4
            await upstream_server.crash()
            await upstream_server.start()
            # At once, before the loop has told the pool of the resets.
            calls = [upstream.send("POST", "/invocations", [], b"{}") for _ in range(16)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            # The reset connections are found readable when taken, so nothing is lost.
            assert [getattr(o, "status", o) for o in outcomes] == [200] * 16
            assert upstream._slots <= 4
    finally:
        await upstream_server.crash()
    assert max(upstream_server.most_open) <= 4
    assert most <= 4


# --- 5. compressed replies ---------------------------------------------------------------


@BOTH
async def test_every_gzip_member_is_decoded(
    factory: Callable[[UpstreamSettings], Upstream],
) -> None:
    body = gzip.compress(b"[1, ") + gzip.compress(b"2]")
    async with scripted(always(encoded(b"gzip", body))) as (url, _), pool(factory, url) as up:
        reply = await up.send("POST", "/invocations", [], b"{}")
    assert reply.body == b"[1, 2]"
    assert reply.header("content-encoding") is None


@pytest.mark.parametrize("coding", [b"gzip", b"deflate"])
@BOTH
async def test_a_body_inflating_past_the_cap_is_a_protocol_error(
    coding: bytes, factory: Callable[[UpstreamSettings], Upstream]
) -> None:
    bomb = b"\0" * (4 << 20)
    packed = gzip.compress(bomb) if coding == b"gzip" else zlib.compress(bomb)
    assert len(packed) < 64 * 1024
    answer = always(encoded(coding, packed))
    async with scripted(answer) as (url, _), pool(factory, url, max_reply_bytes=1 << 20) as up:
        with pytest.raises(UpstreamProtocolError, match="max_reply_bytes"):
            await up.send("POST", "/invocations", [], b"{}")


@BOTH
async def test_a_body_over_the_cap_as_received_is_a_protocol_error(
    factory: Callable[[UpstreamSettings], Upstream],
) -> None:
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 2000\r\n\r\n" + b"1" * 2000
    async with (
        scripted(always(big)) as (url, _),
        pool(factory, url, max_reply_bytes=1000, decompress=False) as up,
    ):
        with pytest.raises(UpstreamProtocolError, match="max_reply_bytes"):
            await up.send("POST", "/invocations", [], b"{}")


async def test_a_large_inflate_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = base.decode_content

    def spy(coding: str, body: bytes, limit: int = 1 << 30) -> bytes | None:
        threads.append(threading.get_ident())
        return real(coding, body, limit)

    monkeypatch.setattr(base, "decode_content", spy)
    small, large = b"[1]", b"[" + b"1," * (base.INLINE_DECODE_BYTES) + b"1]"
    for body in (small, large):
        answer = always(encoded(b"gzip", gzip.compress(body)))
        async with scripted(answer) as (url, _), client(url, max_reply_bytes=4 << 20) as up:
            assert (await up.send("POST", "/invocations", [], b"{}")).body == body
    loop_thread = threading.get_ident()
    assert threads[0] == loop_thread  # small: inline
    assert threads[1] == loop_thread
    assert threads[2] != loop_thread
