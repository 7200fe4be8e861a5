"""The default upstream client: HTTP/1.1 keep-alive pools on httptools and asyncio.

I/O. One `HttptoolsUpstream` per backend origin satisfies `base.Upstream`: it sends one
buffered request and returns the whole reply, or raises a `ProxyError` (UF, UT, UPE).
This module holds the pool and writes requests; `connection` frames each reply.

Why its own client rather than aiohttp's (`aiohttp.AiohttpUpstream`, still selectable
with `server.upstream_client: aiohttp`): aiohttp's client path costs far more CPU per
request than a raw httptools exchange, and the proxy forwards less with it
(`benchmarks/overhead.py` measures both clients side by side). The proxy needs one narrow
slice of HTTP/1.1: a buffered body with a Content-Length, a reply read whole, keep-alive.
For that slice the well-kept parts do the work: httptools frames every reply, and asyncio
carries the bytes and TLS. What is written here is the request head, the pool and the
timeouts. aiosonic and pyreqwest were measured too; neither came close.

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
- limits: a reply head over `connection.MAX_HEAD_BYTES` is a protocol error.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from urllib.parse import urlsplit

import httptools

from proxy.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from proxy.models import UpstreamReply
from proxy.upstream.base import Headers, UpstreamSettings, content_coding, decode_content
from proxy.upstream.connection import Connection, ConnectionClosed

# aiohttp's default. A server that closes sooner (uvicorn after 5 s, gunicorn after 2 s)
# sends its FIN first and the connection leaves the pool then; the rare request that
# races that close is sent once more (`send`). Shorter would cost a TLS handshake per
# request to a model called every few seconds.
IDLE_S = 15.0
# aiohttp sends Content-Length for these even when the body is empty, as does curl.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class HttptoolsUpstream:
    """One keep-alive pool per backend origin."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        parts = urlsplit(settings.origin)
        self._host = parts.hostname or ""
        secure = parts.scheme == "https"
        self._port = parts.port or (443 if secure else 80)
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if secure else None
        self._base = parts.path.rstrip("/").encode("latin-1")
        self._host_line = b"host: " + parts.netloc.encode("idna") + b"\r\n"
        self._idle: list[Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
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
            except ConnectionClosed as exc:
                if not reused or exc.received:
                    raise
                # The server closed a pooled connection as we reused it, before any reply
                # byte: one more try on a fresh connection (module docstring).
                conn = await self._connect(loop, deadline)
                await self._exchange(conn, loop, head, body, deadline, method == "HEAD")
        except TimeoutError as exc:
            raise UpstreamTimeout() from exc
        except ConnectionClosed as exc:
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
        conn: Connection,
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
                raise ConnectionClosed(received=False)
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
    ) -> tuple[Connection, bool]:
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
        waiter: asyncio.Future[Connection | None] = loop.create_future()
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

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Connection:
        self._open += 1
        try:
            timeout = min(self.settings.connect_timeout_s, max(0.0, deadline - loop.time()))
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self._lost),
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

    def _release(self, conn: Connection) -> None:
        """An exchange is over: keep the connection for the next one, or close it."""
        reusable = conn.reusable
        conn.end()
        if reusable and not self._closed:
            self._park(conn)
        else:
            self._drop(conn)

    def _park(self, conn: Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)

    def _drop(self, conn: Connection) -> None:
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

    def _lost(self, conn: Connection) -> None:
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


def _expire_waiter(waiter: asyncio.Future[Connection | None]) -> None:
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
