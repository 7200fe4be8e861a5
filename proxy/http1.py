"""The hot-path upstream client: HTTP/1.1 keep-alive pools on httptools and asyncio.

I/O. One `HttptoolsUpstream` per backend origin satisfies `upstream.Upstream`: it sends one
buffered request and returns the whole reply, or raises a `ProxyError` (UF, UT, UPE).

Why not aiohttp, the first choice (`upstream.AiohttpUpstream`, still selectable with
`server.upstream_client: aiohttp`): measured on these 2-core machines, its client path
cost 200–240 µs of CPU per request against 88 µs for a raw httptools exchange, and in
`benchmarks/overhead.py` (32 connections) the proxy used 327–355 µs of CPU per request
with this client and 477 µs with aiohttp's. The proxy needs one narrow slice of
HTTP/1.1: a buffered body with a Content-Length, a reply read whole, keep-alive. For that
slice the well-kept parts do the work: httptools (llhttp, the parser uvicorn runs for our
server side) frames every reply, and asyncio carries the bytes and TLS. What is written
here is the request head, the pool and the timeouts. aiosonic (278 µs) and pyreqwest
(176 µs, across its threads) were measured too; neither came close.

What this client does, and what it deliberately does not:
- pools: at most `pool_size` connections per origin, reused most-recent first. A
  connection the server closes while idle leaves the pool at once; one idle longer than
  `IDLE_S` is closed rather than reused. A request whose reused connection turns out
  closed before any reply byte arrives is sent once more on a fresh connection. Almost
  always the server closed it as the request went out (Go's net/http retries that case
  too); should the server have read it and died, scoring has no side effects to repeat;
- replies framed by Content-Length, chunked, or the end of the connection; 1xx interim
  replies are skipped; HEAD, 204 and 304 replies carry no body;
- with `decompress` (translated replies, which the proxy parses), gzip and deflate bodies
  are decoded and Content-Encoding dropped with them; any other coding is a protocol
  error, since the body could not be read. Without it, the bytes and headers stay as sent;
- adds only Host and Content-Length: no User-Agent, Accept or Accept-Encoding of its own,
  no cookies kept, no redirects followed, no proxy settings read from the environment;
- limits: a reply head over `MAX_HEAD_BYTES` is a protocol error.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

from proxy.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from proxy.models import UpstreamReply
from proxy.upstream import Headers, UpstreamSettings, content_coding, decode_content

# aiohttp's default. A server that closes sooner (uvicorn after 5 s, gunicorn after 2 s)
# sends its FIN first and the connection leaves the pool then; the rare request that
# races that close is sent once more (`send`). Shorter would cost a TLS handshake per
# request to a model called every few seconds.
IDLE_S = 15.0
MAX_HEAD_BYTES = 64 * 1024
# aiohttp sends Content-Length for these even when the body is empty, as does curl.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class _Closed(Exception):
    """The connection ended before the reply was complete."""

    def __init__(self, received: bool) -> None:
        super().__init__("connection closed")
        self.received = received


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    # The current exchange (set by `_reset`).
    _head_only: bool
    _received: bool
    _head_bytes: int
    _framed: bool
    _interim: bool
    _keep_alive: bool
    complete: bool
    status: int
    headers: list[tuple[str, str]]
    body: list[bytes]

    def __init__(self, on_lost: Callable[[_Connection], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        # Set once the pool has given this connection's slot back (it is closed or closing).
        self.dropped = False
        self.idle_since = 0.0
        self._on_lost = on_lost
        self._waiter: asyncio.Future[None] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._reset(head_only=False)

    # --- one exchange -------------------------------------------------------------------

    def _reset(self, *, head_only: bool) -> None:
        self._head_only = head_only
        self._received = False
        self._head_bytes = 0
        self._framed = False
        self._interim = False
        self._keep_alive = False
        self.complete = False
        self.status = 0
        self.headers = []
        self.body = []

    def begin(self, loop: asyncio.AbstractEventLoop, head_only: bool) -> asyncio.Future[None]:
        # A parser per exchange: after a HEAD reply (Content-Length, no body) the old one
        # would still wait for body bytes that never come.
        self._parser = httptools.HttpResponseParser(self)
        self._reset(head_only=head_only)
        self._waiter = waiter = loop.create_future()
        return waiter

    def end(self) -> None:
        self._waiter = None
        self._parser = None

    @property
    def reusable(self) -> bool:
        return self.complete and self._keep_alive and not self.closed and not self._head_only

    def expire(self) -> None:
        """The exchange's deadline passed: fail it (the caller drops the connection)."""
        self._fail(TimeoutError())

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _finish(self) -> None:
        self.complete = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self.complete:
            # Bytes nobody asked for (on an idle connection, or after a whole reply):
            # the stream can no longer be trusted.
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            return
        self._received = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost finishes the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self.status and not self._framed and not self._interim:
                self._finish()  # a body delimited by the end of the connection
            else:
                self._fail(_Closed(self._received))
        self._on_lost(self)

    # --- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status:
            return  # a trailer after a chunked body: not part of the reply's head
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise UpstreamProtocolError("reply head too large")
        lname = name.lower()
        if lname == b"content-length" or (
            lname == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._framed = True
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim reply (100 Continue, 103 Early Hints): the real one follows.
            self._interim = True
            self.headers = []
            self._head_bytes = 0
            self._framed = False
            return
        self.status = status
        if self._head_only:
            self._finish()  # a reply to HEAD has no body, whatever its Content-Length

    def on_body(self, chunk: bytes) -> None:
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.complete:
            # A second reply to one request: the stream can no longer be trusted.
            self._keep_alive = False
            return
        # Read it now: llhttp resets its flags as the callback returns.
        assert self._parser is not None
        self._keep_alive = self._parser.should_keep_alive()
        self._finish()


class HttptoolsUpstream:
    """One keep-alive pool per backend origin (architecture §1.2 `upstream.py`)."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        parts = urlsplit(settings.origin)
        self._host = parts.hostname or ""
        secure = parts.scheme == "https"
        self._port = parts.port or (443 if secure else 80)
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if secure else None
        self._base = parts.path.rstrip("/").encode("latin-1")
        self._host_line = b"host: " + parts.netloc.encode("idna") + b"\r\n"
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    async def send(self, method: str, path: str, headers: Headers, body: bytes) -> UpstreamReply:
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.total_timeout_s
        head = self._head(method, path, headers, body)
        try:
            conn, reused = await self._acquire(loop, deadline)
            try:
                await self._exchange(conn, loop, head, body, deadline, method == "HEAD")
            except _Closed as exc:
                if not reused or exc.received:
                    raise
                # The server closed a pooled connection as we reused it, before any reply
                # byte: one more try on a fresh connection (module docstring).
                conn = await self._connect(loop, deadline)
                await self._exchange(conn, loop, head, body, deadline, method == "HEAD")
        except TimeoutError as exc:
            raise UpstreamTimeout() from exc
        except _Closed as exc:
            if exc.received:
                raise UpstreamProtocolError("upstream closed the connection mid-reply") from exc
            raise UpstreamConnectError() from exc
        except httptools.HttpParserError as exc:
            raise UpstreamProtocolError() from exc
        except OSError as exc:  # refused, reset, unreachable, TLS failures
            raise UpstreamConnectError() from exc
        status, reply_headers, payload = conn.status, conn.headers, b"".join(conn.body)
        self._release(conn)
        if self.settings.decompress:
            reply_headers, payload = _decoded(reply_headers, payload)
        return UpstreamReply(status, tuple(reply_headers), payload, time.perf_counter() - t0)

    def _head(self, method: str, path: str, headers: Headers, body: bytes) -> bytes:
        lines = [method.encode("latin-1"), b" ", self._base, path.encode("latin-1")]
        lines.append(b" HTTP/1.1\r\n")
        lines.append(self._host_line)
        count = 2  # the request line and Host
        for name, value in headers:
            lines += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
            count += 1
        if body or method in BODY_METHODS:
            lines += (b"content-length: ", str(len(body)).encode(), b"\r\n")
            count += 1
        lines.append(b"\r\n")
        head = b"".join(lines)
        # Exactly one CR and one LF per line written: one inside a method, path, name or
        # value would start a line of its own (request splitting), so refuse to send it.
        if head.count(b"\n") != count + 1 or head.count(b"\r") != count + 1:
            raise ValueError("the request line or a header holds a CR or LF")
        return head

    async def _exchange(
        self,
        conn: _Connection,
        loop: asyncio.AbstractEventLoop,
        head: bytes,
        body: bytes,
        deadline: float,
        head_only: bool,
    ) -> None:
        waiter = conn.begin(loop, head_only)
        timer = loop.call_at(deadline, conn.expire)
        try:
            if conn.closed or conn.transport is None:
                # Lost between leaving the pool and now (handed over by `_park`).
                raise _Closed(received=False)
            if len(body) < 65536:
                conn.transport.write(head + body)  # one segment for the usual small body
            else:
                conn.transport.writelines((head, body))
            await waiter
        except BaseException:
            # Timed out, cancelled or broken mid-exchange: the stream is in an unknown
            # state, so the connection is never reused.
            conn.end()
            self._drop(conn)
            raise
        finally:
            timer.cancel()

    # --- the pool -----------------------------------------------------------------------

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> tuple[_Connection, bool]:
        if self._closed:
            raise UpstreamConnectError("upstream pool closed")
        now = loop.time()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn, True
            self._drop(conn)
        if self._open < self.settings.pool_size:
            return await self._connect(loop, deadline), False
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_at(deadline, _expire_waiter, waiter)
        try:
            handed = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed a connection in the same turn we were cancelled: give it back.
                given = waiter.result()
                if given is not None:
                    self._park(given)
                else:
                    self._wake()
            raise
        finally:
            timer.cancel()
            if not waiter.done():
                waiter.cancel()
        if handed is not None:
            return handed, True
        return await self._connect(loop, deadline), False

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        self._open += 1
        try:
            timeout = min(self.settings.connect_timeout_s, max(0.0, deadline - loop.time()))
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._lost),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        return conn

    def _release(self, conn: _Connection) -> None:
        """An exchange is over: keep the connection for the next one, or close it."""
        reusable = conn.reusable
        conn.end()
        if reusable and not self._closed:
            self._park(conn)
        else:
            self._drop(conn)

    def _park(self, conn: _Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)

    def _drop(self, conn: _Connection) -> None:
        """Close a connection and free its slot (once, however often it is called)."""
        transport = conn.transport
        if transport is not None and not transport.is_closing():
            if conn.complete:
                transport.close()
            else:
                transport.abort()  # mid-exchange: unread bytes must not be waited for
        if not conn.dropped:
            conn.dropped = True
            self._open -= 1
            self._wake()

    def _lost(self, conn: _Connection) -> None:
        """A connection closed by the server: an idle one leaves the pool."""
        if conn in self._idle:
            self._idle.remove(conn)
            self._drop(conn)

    def _wake(self) -> None:
        """A slot is free: the first waiter opens a connection of its own."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._idle):
            self._drop(conn)
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamConnectError("upstream pool closed"))
        self._waiters.clear()


def _expire_waiter(waiter: asyncio.Future[_Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _decoded(headers: list[tuple[str, str]], body: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """A reply's body without its Content-Encoding, for replies the proxy will parse."""
    coding = content_coding(headers)
    if coding is None:
        return headers, body
    try:
        decoded = decode_content(coding, body)
    except zlib.error as exc:
        raise UpstreamProtocolError("reply body does not match its Content-Encoding") from exc
    if decoded is None:
        raise UpstreamProtocolError(f"cannot decode Content-Encoding {coding!r}")
    kept = [(k, v) for k, v in headers if k.lower() not in ("content-encoding", "content-length")]
    return kept, decoded
