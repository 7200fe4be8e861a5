"""The proxy's own HTTP/1.1 client against scripted servers on real loopback sockets.

Each server here is a plain asyncio TCP server that reads one request head (and its body)
at a time and answers with bytes the test chose, so framing, keep-alive, pooling and
failure cases can be produced exactly. The client's common contract (errors, no headers
of its own, cookies) is in test_base.py, run against every client.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from proxy.upstream import http1
from proxy.upstream.base import UpstreamSettings
from proxy.upstream.http1 import HttptoolsUpstream

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n[]"


@dataclass
class Request:
    connection: int
    head: bytes
    body: bytes


class Closing(bytes):
    """Bytes to write, after which the server closes the connection."""


Answer = Callable[[Request], Awaitable[bytes | None]]


@dataclass
class Script:
    """What a scripted server saw: every request, on which connection."""

    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return head, body


@asynccontextmanager
async def scripted(
    answer: Answer, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, Script]]:
    """Serve `answer` per request: bytes to write (`Closing`: then close), or None to close
    the connection without a word."""
    script = Script()
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        script.connections += 1
        number = script.connections
        script.open_now += 1
        script.most_open = max(script.most_open, script.open_now)
        writers.add(writer)
        try:
            while (got := await _read_request(reader)) is not None:
                request = Request(number, *got)
                script.requests.append(request)
                out = await answer(request)
                if out is None:
                    break
                writer.write(out)
                await writer.drain()
                if isinstance(out, Closing):
                    break
        except ConnectionError:
            pass
        finally:
            script.open_now -= 1
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}", script
    finally:
        server.close()
        for writer in list(writers):
            writer.transport.abort()
        await server.wait_closed()


def settings(
    origin: str,
    *,
    pool: int = 4,
    total: float = 5.0,
    decompress: bool = True,
    max_reply_bytes: int = 1 << 20,
    retry_after_write: bool = False,
    trust_env: bool = False,
) -> UpstreamSettings:
    return UpstreamSettings(
        origin, 1.0, total, pool, decompress, max_reply_bytes, retry_after_write, trust_env
    )


@asynccontextmanager
async def client(origin: str, **kwargs: Any) -> AsyncIterator[HttptoolsUpstream]:
    upstream = HttptoolsUpstream(settings(origin, **kwargs))
    try:
        yield upstream
    finally:
        await upstream.aclose()


def always(reply: bytes) -> Answer:
    async def answer(request: Request) -> bytes:
        return reply

    return answer


async def test_one_connection_carries_sequential_requests() -> None:
    async with scripted(always(OK)) as (url, script), client(url) as upstream:
        for _ in range(3):
            reply = await upstream.send("POST", "/invocations", [], b"{}")
            assert (reply.status, reply.body) == (200, b"[]")
    assert script.connections == 1
    assert len(script.requests) == 3


async def test_the_request_is_written_as_given_plus_host_and_length() -> None:
    async with scripted(always(OK)) as (url, script), client(url) as upstream:
        await upstream.send("POST", "/m/1/invocations?x=1", [("x-a", "b c")], b'{"a": 1}')
    request = script.requests[0]
    lines = request.head.split(b"\r\n")
    assert lines[0] == b"POST /m/1/invocations?x=1 HTTP/1.1"
    assert lines[1] == b"host: " + url.removeprefix("http://").encode()
    assert sorted(lines[2:4]) == [b"content-length: 8", b"x-a: b c"]
    assert request.body == b'{"a": 1}'


async def test_a_path_in_the_origin_prefixes_every_request() -> None:
    async with scripted(always(OK)) as (url, script), client(url + "/base/") as upstream:
        await upstream.send("POST", "/invocations", [], b"{}")
    assert script.requests[0].head.startswith(b"POST /base/invocations HTTP/1.1\r\n")


async def test_get_without_a_body_sends_no_content_length() -> None:
    async with scripted(always(OK)) as (url, script), client(url) as upstream:
        await upstream.send("GET", "/ping", [], b"")
        await upstream.send("POST", "/invocations", [], b"")
    assert b"content-length" not in script.requests[0].head
    assert b"content-length: 0" in script.requests[1].head


@pytest.mark.parametrize(
    ("name", "value"),
    [("x-a", "1\r\nx-injected: 2"), ("x-a", "1\nx"), ("x-a", "1\rx"), ("x\r\ny", "1")],
)
async def test_a_line_break_in_a_header_is_never_sent(name: str, value: str) -> None:
    async with scripted(always(OK)) as (url, script), client(url) as upstream:
        with pytest.raises(ValueError, match="CR or LF"):
            await upstream.send("POST", "/invocations", [(name, value)], b"{}")
        assert script.requests == []
        # The refusal cost no connection: the pool still answers.
        assert (await upstream.send("POST", "/invocations", [], b"{}")).status == 200


async def test_the_pool_never_opens_more_than_its_size() -> None:
    async def slow(request: Request) -> bytes:
        await asyncio.sleep(0.05)
        return OK

    async with scripted(slow) as (url, script), client(url, pool=2) as upstream:
        replies = await asyncio.gather(
            *(upstream.send("POST", "/invocations", [], b"{}") for _ in range(8))
        )
    assert [r.status for r in replies] == [200] * 8
    assert script.most_open <= 2
    assert script.connections == 2


async def test_requests_timing_out_in_the_queue_or_on_the_wire_free_their_slots() -> None:
    release = asyncio.Event()

    async def hold(request: Request) -> bytes:
        await release.wait()
        return OK

    async with scripted(hold) as (url, _), client(url, pool=1, total=0.3) as upstream:
        # One request holds the only connection; the others wait for it, then for their
        # own, and every one of them gives up at its deadline.
        outcomes = await asyncio.gather(
            *(upstream.send("POST", "/invocations", [], b"{}") for _ in range(3)),
            return_exceptions=True,
        )
        assert [type(o) for o in outcomes] == [UpstreamTimeout] * 3
        release.set()
        assert (await upstream.send("POST", "/invocations", [], b"{}")).status == 200
        assert upstream._slots == 1


async def test_a_cancelled_request_gives_its_connection_slot_back() -> None:
    async def hang_first(request: Request) -> bytes:
        if request.connection == 1:
            await asyncio.sleep(30)
        return OK

    async with scripted(hang_first) as (url, script), client(url, pool=1) as upstream:
        task = asyncio.ensure_future(upstream.send("POST", "/invocations", [], b"{}"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        reply = await asyncio.wait_for(upstream.send("POST", "/invocations", [], b"{}"), 2)
    assert reply.status == 200
    assert script.connections == 2  # the half-used connection was never reused


async def test_a_reused_connection_closed_unanswered_is_not_sent_again() -> None:
    async def close_second_on_first_connection(request: Request) -> bytes | None:
        if request.connection == 1 and len(script.requests) == 2:
            return None  # it read the request (the model may have run), then closed
        return OK

    async with scripted(close_second_on_first_connection) as (url, script), client(url) as up:
        assert (await up.send("POST", "/invocations", [], b"{}")).status == 200
        with pytest.raises(UpstreamConnectError):
            await up.send("POST", "/invocations", [], b"{}")
    assert [r.connection for r in script.requests] == [1, 1]


async def test_retry_after_write_sends_it_once_more_on_another_connection() -> None:
    async def close_second_on_first_connection(request: Request) -> bytes | None:
        if request.connection == 1 and len(script.requests) == 2:
            return None
        return OK

    async with (
        scripted(close_second_on_first_connection) as (url, script),
        client(url, retry_after_write=True) as up,
    ):
        assert (await up.send("POST", "/invocations", [], b"{}")).status == 200
        assert (await up.send("POST", "/invocations", [], b"{}")).status == 200
    assert [r.connection for r in script.requests] == [1, 1, 2]


async def test_a_fresh_connection_closed_unanswered_is_not_retried() -> None:
    async def close(request: Request) -> None:
        return None

    async with scripted(close) as (url, script), client(url) as upstream:
        with pytest.raises(UpstreamConnectError):
            await upstream.send("POST", "/invocations", [], b"{}")
    assert len(script.requests) == 1


async def test_a_connection_the_server_closes_while_idle_leaves_the_pool() -> None:
    async def answer_then_close(request: Request) -> bytes:
        return Closing(OK)  # no "connection: close": the client parks it as keep-alive

    async with scripted(answer_then_close) as (url, script), client(url, pool=2) as upstream:
        await upstream.send("POST", "/invocations", [], b"{}")
        for _ in range(200):
            if not upstream._idle:
                break
            await asyncio.sleep(0.01)
        assert upstream._idle == []
        assert upstream._slots == 0
        assert (await upstream.send("POST", "/invocations", [], b"{}")).status == 200
    assert [r.connection for r in script.requests] == [1, 2]


async def test_chunked_replies_are_joined() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n"
        b"\r\n3\r\n[1,\r\n3\r\n 2]\r\n0\r\nx-trailer: t\r\n\r\n"
    )
    async with scripted(always(chunked)) as (url, script), client(url) as upstream:
        first = await upstream.send("POST", "/invocations", [], b"{}")
        second = await upstream.send("POST", "/invocations", [], b"{}")
    assert first.body == second.body == b"[1, 2]"
    assert first.header("x-trailer") is None  # a trailer is not part of the head
    assert script.connections == 1


async def test_a_reply_without_length_ends_with_the_connection() -> None:
    http10 = Closing(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
    async with scripted(always(http10)) as (url, script), client(url) as upstream:
        first = await asyncio.wait_for(upstream.send("GET", "/", [], b""), 3)
        second = await asyncio.wait_for(upstream.send("GET", "/", [], b""), 3)
    assert (first.status, first.body) == (200, b"all of it")
    assert second.body == b"all of it"
    assert script.connections == 2  # such a connection is never reused


async def test_a_head_reply_has_no_body_whatever_its_length() -> None:
    head_reply = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"
    async with scripted(always(head_reply)) as (url, _), client(url) as upstream:
        reply = await asyncio.wait_for(upstream.send("HEAD", "/ping", [], b""), 2)
    assert (reply.status, reply.body) == (200, b"")


async def test_interim_replies_are_skipped() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK
    async with scripted(always(interim)) as (url, _), client(url) as upstream:
        reply = await upstream.send("POST", "/invocations", [], b"{}")
    assert (reply.status, reply.body) == (200, b"[]")
    assert reply.header("link") is None


def encoded(coding: bytes, body: bytes) -> bytes:
    """A 200 reply whose body is `body` under Content-Encoding `coding`."""
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: "
        + coding
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        (b"gzip", gzip.compress(b"[1, 2]")),
        (b"deflate", zlib.compress(b"[1, 2]")),
        (b"deflate", zlib.compress(b"[1, 2]")[2:-4]),  # raw deflate, no zlib wrapper
        (b"identity", b"[1, 2]"),
    ],
)
async def test_decompress_decodes_and_drops_the_coding(coding: bytes, body: bytes) -> None:
    answer = always(encoded(coding, body))
    async with scripted(answer) as (url, _), client(url, decompress=True) as upstream:
        reply = await upstream.send("POST", "/invocations", [], b"{}")
    assert reply.body == b"[1, 2]"
    assert reply.header("content-encoding") is None
    assert reply.header("content-length") is None


async def test_without_decompress_bytes_and_headers_stay_as_sent() -> None:
    body = gzip.compress(b"[1, 2]")
    answer = always(encoded(b"gzip", body))
    async with scripted(answer) as (url, _), client(url, decompress=False) as upstream:
        reply = await upstream.send("POST", "/invocations", [], b"{}")
    assert reply.body == body
    assert reply.header("content-encoding") == "gzip"


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (encoded(b"br", b"\x0b\x02\x80[1]\x03"), "cannot decode"),
        (encoded(b"gzip", b"not gzip"), "does not match"),
    ],
)
async def test_an_unreadable_coding_is_a_protocol_error(reply: bytes, message: str) -> None:
    async with scripted(always(reply)) as (url, _), client(url) as upstream:
        with pytest.raises(UpstreamProtocolError, match=message):
            await upstream.send("POST", "/invocations", [], b"{}")


async def test_a_truncated_body_is_a_protocol_error() -> None:
    truncated = Closing(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")
    async with scripted(always(truncated)) as (url, _), client(url) as upstream:
        with pytest.raises(UpstreamProtocolError, match="mid-reply"):
            await asyncio.wait_for(upstream.send("POST", "/invocations", [], b"{}"), 3)


async def test_a_huge_reply_head_is_a_protocol_error() -> None:
    big = b"HTTP/1.1 200 OK\r\n" + b"x-pad: " + b"a" * 70_000 + b"\r\ncontent-length: 0\r\n\r\n"
    async with scripted(always(big)) as (url, _), client(url) as upstream:
        with pytest.raises(UpstreamProtocolError):
            await upstream.send("POST", "/invocations", [], b"{}")


async def test_a_large_body_is_sent_whole() -> None:
    body = b"[" + b"1," * 200_000 + b"1]"
    async with scripted(always(OK)) as (url, script), client(url) as upstream:
        await upstream.send("POST", "/invocations", [], body)
    assert script.requests[0].body == body


async def test_a_closed_pool_refuses_new_requests() -> None:
    async with scripted(always(OK)) as (url, _):
        upstream = HttptoolsUpstream(settings(url))
        await upstream.send("POST", "/invocations", [], b"{}")
        await upstream.aclose()
        with pytest.raises(UpstreamConnectError):
            await upstream.send("POST", "/invocations", [], b"{}")


async def test_https_verifies_the_server_certificate(
    self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    async with scripted(always(OK), ssl_context=server_context) as (url, _):
        # Not trusted: refused like an unreachable upstream, nothing is sent.
        async with client(url) as upstream:
            with pytest.raises(UpstreamConnectError):
                await upstream.send("POST", "/invocations", [], b"{}")
        # Trusted through OpenSSL's own variable, as a deployment would add its CA.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        async with client(url) as upstream:
            reply = await upstream.send("POST", "/invocations", [], b"{}")
    assert (reply.status, reply.body) == (200, b"[]")


async def test_a_connection_idle_too_long_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "IDLE_S", 0.0)
    async with scripted(always(OK)) as (url, script), client(url) as upstream:
        await upstream.send("POST", "/invocations", [], b"{}")
        await upstream.send("POST", "/invocations", [], b"{}")
        assert upstream._slots == 1
    assert [r.connection for r in script.requests] == [1, 2]


async def test_bytes_on_an_idle_connection_retire_it() -> None:
    async def answer_twice(request: Request) -> bytes:
        return OK + b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"  # one reply too many

    async with scripted(answer_twice) as (url, script), client(url) as upstream:
        await upstream.send("POST", "/invocations", [], b"{}")
        for _ in range(200):
            if not upstream._idle:
                break
            await asyncio.sleep(0.01)
        assert (await upstream.send("POST", "/invocations", [], b"{}")).body == b"[]"
    assert [r.connection for r in script.requests] == [1, 2]


async def test_a_closed_connection_frees_its_slot_for_a_waiting_request() -> None:
    closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n[]"

    async def slow_close(request: Request) -> bytes:
        await asyncio.sleep(0.05)
        return Closing(closing)

    async with scripted(slow_close) as (url, script), client(url, pool=1) as upstream:
        replies = await asyncio.gather(
            *(upstream.send("POST", "/invocations", [], b"{}") for _ in range(3))
        )
    assert [r.status for r in replies] == [200, 200, 200]
    assert script.connections == 3
    assert script.most_open == 1


async def test_closing_the_pool_fails_the_requests_waiting_for_a_connection() -> None:
    async def hang(request: Request) -> bytes:
        await asyncio.sleep(30)
        return OK

    async with scripted(hang) as (url, _):
        upstream = HttptoolsUpstream(settings(url, pool=1))
        first = asyncio.ensure_future(upstream.send("POST", "/invocations", [], b"{}"))
        waiting = asyncio.ensure_future(upstream.send("POST", "/invocations", [], b"{}"))
        await asyncio.sleep(0.05)
        await upstream.aclose()
        with pytest.raises(UpstreamConnectError):
            await waiting
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
