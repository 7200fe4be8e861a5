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
- pools: at most `pool_size` connections open per origin, counted until each socket is
  really closed, so callers beyond it wait for one (within their deadline), however many
  connections an upstream restart breaks at once. Idle connections are reused
  most-recent first; one the server closes while idle leaves the pool at once, one idle
  longer than `IDLE_S` is closed, and one whose socket is readable when it is taken (the
  server's FIN not yet delivered, as urllib3 checks) is closed instead of written to;
- a request is never sent twice once any of its bytes were written, since the server may
  have read it and run the model: a connection that closes without an answer is an
  error. Only a request that never reached the connection is tried on another one.
  `retry_after_write` lets a backend whose calls are safe to repeat have one more try,
  on another connection, when a reused connection closes before any reply byte. A
  connection failure says whether any of the request was written
  (`UpstreamConnectError.sent`): refused, reset or timed out while connecting, it was
  not, and the caller's retry rules (`proxy.resilience`) may send it again;
- replies framed by Content-Length, chunked, or the end of the connection (a clean close
  only; a reset cuts it short); 1xx interim replies are skipped; HEAD, 204 and 304
  replies carry no body. Bytes after a reply retire the connection (`connection`);
- with `decompress` (translated replies, which the proxy parses), gzip and deflate bodies
  are decoded and Content-Encoding dropped with them (`base.decoded`: several gzip members
  in turn, a large inflate off the event loop); any other coding is a protocol error,
  since the body could not be read. Without it, the bytes and headers stay as sent;
- adds only Host and Content-Length: no User-Agent, Accept or Accept-Encoding of its own,
  no cookies kept, no redirects followed;
- with `trust_env`, the egress proxy the environment names (`egress`): an http:// origin
  is asked for in absolute form through it, an https:// one through a CONNECT tunnel
  (`tunnel`), with Proxy-Authorization from the proxy URL's credentials;
- limits: a reply head over `connection.MAX_HEAD_BYTES`, or a body over
  `max_reply_bytes` (as received, or decoded), is a protocol error.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from urllib.parse import urlsplit

import httptools

from proxy.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from proxy.models import Body, UpstreamReply
from proxy.upstream.base import Headers, UpstreamSettings, content_coding, decoded
from proxy.upstream.connection import Connection, ConnectionClosed
from proxy.upstream.egress import egress_proxy
from proxy.upstream.tunnel import open_tunnel

# aiohttp's default. A server that closes sooner (uvicorn after 5 s, gunicorn after 2 s)
# sends its FIN first and the connection leaves the pool then, or is found readable when
# taken. Shorter would cost a TLS handshake per request to a model called every few seconds.
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
        self._proxy = egress_proxy(settings.origin) if settings.trust_env else None
        base = parts.path.rstrip("/").encode("latin-1")
        fixed = [b"host: ", parts.netloc.encode("idna"), b"\r\n"]
        if self._proxy is not None and not secure:
            # Through a forward proxy, the request line names the whole URL (RFC 9112
            # §3.2.2); an https:// origin is tunnelled instead and sees origin form.
            base = b"http://" + parts.netloc.encode("idna") + base
            auth = self._proxy.authorization
            if auth is not None:
                fixed += (b"proxy-authorization: ", auth.encode("ascii"), b"\r\n")
        self._base = base
        self._fixed = b"".join(fixed)
        self._fixed_lines = self._fixed.count(b"\n")
        self._idle: list[Connection] = []
        # Connections open or opening, and slots handed to a waiter that will open one.
        self._slots = 0
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._closed = False

    def __repr__(self) -> str:
        # The head lines hold the proxy's credentials: never part of a repr.
        return f"HttptoolsUpstream({self.settings.origin!r}, proxy={self._proxy!r})"

    async def send(self, method: str, path: str, headers: Headers, body: Body) -> UpstreamReply:
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.total_timeout_s
        head = self._head(method, path, headers, body)
        try:
            conn = await self._call(loop, head, body, deadline, method == "HEAD")
        except TimeoutError as exc:
            raise UpstreamTimeout() from exc
        except ConnectionClosed as exc:
            if exc.received:
                raise UpstreamProtocolError("upstream closed the connection mid-reply") from exc
            raise UpstreamConnectError(sent=exc.written) from exc
        except httptools.HttpParserError as exc:
            raise UpstreamProtocolError() from exc
        except OSError as exc:
            # Refused, reset, unreachable, TLS failures, proxy refusals: all while opening
            # a connection (`_open`), before any byte of the request was written; a
            # connection lost later ends its exchange as `ConnectionClosed`.
            raise UpstreamConnectError(sent=False) from exc
        status, reply_headers, payload = conn.status, conn.headers, b"".join(conn.body)
        self._release(conn)
        if self.settings.decompress and content_coding(reply_headers) is not None:
            reply_headers, payload = await decoded(
                reply_headers, payload, self.settings.max_reply_bytes
            )
        return UpstreamReply(status, tuple(reply_headers), payload, time.perf_counter() - t0)

    async def _call(
        self,
        loop: asyncio.AbstractEventLoop,
        head: bytes,
        body: Body,
        deadline: float,
        head_only: bool,
    ) -> Connection:
        """One exchange on some connection of the pool, tried again only when that is safe."""
        replay = self.settings.retry_after_write
        while True:
            conn, reused = await self._acquire(loop, deadline)
            try:
                await self._exchange(conn, loop, head, body, deadline, head_only)
            except ConnectionClosed as exc:
                if not exc.written and reused:
                    continue  # nothing of this request reached the server
                if replay and reused and not exc.received:
                    replay = False  # the backend allows one more try (module docstring)
                    continue
                raise
            return conn

    def _head(self, method: str, path: str, headers: Headers, body: Body) -> bytes:
        lines = [method.encode("latin-1"), b" ", self._base, path.encode("latin-1")]
        lines.append(b" HTTP/1.1\r\n")
        lines.append(self._fixed)
        count = 1 + self._fixed_lines  # the request line, Host (and Proxy-Authorization)
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
        body: Body,
        deadline: float,
        head_only: bool,
    ) -> None:
        waiter = conn.begin(loop, head_only)
        timer = loop.call_at(deadline, conn.expire)
        try:
            transport = conn.transport
            if conn.closed or transport is None or transport.is_closing():
                raise ConnectionClosed(received=False, written=False)
            if len(body) < 65536:
                transport.write(head + body)  # one segment for the usual small body
            else:
                transport.writelines((head, body))
            if transport.is_closing():
                # The transport tries to send at once and closes itself when that first
                # send fails: the kernel took none of the request.
                raise ConnectionClosed(received=False, written=False)
            await waiter
        except BaseException:
            # Timed out, cancelled or broken mid-exchange: the stream is in an unknown
            # state, so the connection is never reused.
            conn.end()
            self._retire(conn)
            raise
        finally:
            timer.cancel()

    # --- the pool -----------------------------------------------------------------------

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> tuple[Connection, bool]:
        """A connection for one exchange, and whether it carried one before. Nothing
        awaits between the checks here and the caller's write."""
        while True:
            if self._closed:
                raise UpstreamConnectError("upstream pool closed")
            now = loop.time()
            while self._idle:
                conn = self._idle.pop()
                if now - conn.idle_since < IDLE_S and not conn.stale():
                    return conn, True
                self._retire(conn)
            if self._slots < self.settings.pool_size:
                self._slots += 1
                return await self._open(loop, deadline), False
            handed = await self._wait(loop, deadline)
            if handed is None:
                return await self._open(loop, deadline), False  # a slot was kept for us
            if not handed.stale():
                return handed, True
            self._retire(handed)  # closed while it was being handed over: try again

    async def _wait(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Connection | None:
        """Wait for an idle connection, or for a slot (None) to open one in."""
        waiter: asyncio.Future[Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_at(deadline, _expire_waiter, waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed something in the same turn we were cancelled: give it back.
                given = waiter.result()
                if given is not None:
                    self._park(given)
                else:
                    self._free_slot()
            raise
        finally:
            timer.cancel()
            if not waiter.done():
                waiter.cancel()

    async def _open(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Connection:
        """A new connection in a slot the caller has taken; the slot is given back when
        its socket is closed (`_lost`), or here if it never opens."""
        made: list[Connection] = []

        def protocol() -> Connection:
            made.append(Connection(self._lost, self.settings.max_reply_bytes))
            return made[-1]

        raw: asyncio.Transport | None = None
        left = max(0.0, deadline - loop.time())
        timeout = min(self.settings.connect_timeout_s, left)
        # `timeout.connect` spent is a connection failure before anything was written (UF,
        # safe to retry); the request's own deadline spent meanwhile is still a timeout (UT).
        connect_bound = timeout < left
        connecting = asyncio.timeout(timeout)
        try:
            async with connecting:
                if self._proxy is None:
                    await loop.create_connection(
                        protocol,
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._host if self._ssl is not None else None,
                    )
                elif self._ssl is None:
                    await loop.create_connection(protocol, self._proxy.host, self._proxy.port)
                else:
                    raw = await open_tunnel(loop, self._proxy, self._host, self._port)
                    conn = protocol()
                    tls = await loop.start_tls(raw, conn, self._ssl, server_hostname=self._host)
                    assert tls is not None  # None only for a transport without TLS support
                    # start_tls hands over the new transport without connection_made.
                    conn.connection_made(tls)
        except BaseException as exc:
            for conn in made:
                if conn.transport is not None:
                    conn.transport.abort()
            if raw is not None:
                raw.abort()
            # After the sockets' own close callbacks, which were scheduled first.
            loop.call_soon(self._free_slot)
            if isinstance(exc, TimeoutError) and connect_bound and connecting.expired():
                raise UpstreamConnectError("connect timed out", sent=False) from exc
            raise
        conn = made[-1]
        conn.counted = True
        if conn.closed:  # lost before we got here: its `_lost` did not count it
            self._lost(conn)
        return conn

    def _release(self, conn: Connection) -> None:
        """An exchange is over: keep the connection for the next one, or close it."""
        reusable = conn.reusable
        conn.end()
        if reusable and not self._closed:
            self._park(conn)
        else:
            self._retire(conn)

    def _park(self, conn: Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)

    def _retire(self, conn: Connection) -> None:
        """Close a connection for good. Its slot comes back with `_lost`, once the socket
        is closed: abort() closes it without waiting to flush (or for a TLS close_notify),
        and unread bytes are never waited for."""
        conn.closed = True
        transport = conn.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    def _lost(self, conn: Connection) -> None:
        """A connection's socket is closed: it leaves the pool and frees its slot."""
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.counted:
            conn.counted = False
            self._free_slot()

    def _free_slot(self) -> None:
        """A slot is free: the first waiter gets it to open a connection of its own."""
        self._slots -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._slots += 1
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._idle):
            self._retire(conn)
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamConnectError("upstream pool closed"))
        self._waiters.clear()


def _expire_waiter(waiter: asyncio.Future[Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
