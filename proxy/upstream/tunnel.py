"""A CONNECT tunnel through an egress proxy, for an https:// origin. asyncio I/O.

`open_tunnel` connects to the proxy, asks it for a tunnel to the origin and returns the
raw transport once the proxy has said 2xx; `http1` then starts TLS with the origin over it.
The proxy's reply head is parsed by llhttp, like every other reply; nothing may follow it,
since the origin cannot speak before our TLS ClientHello.
"""

from __future__ import annotations

import asyncio

import httptools

from proxy.upstream.connection import MAX_HEAD_BYTES
from proxy.upstream.egress import EgressProxy, authority


class TunnelRefused(OSError):
    """The proxy answered CONNECT with something other than 2xx, or not with HTTP."""


class _Head(Exception):
    """Raised from the reply's last head callback: a CONNECT reply has no body to read."""


class _TunnelReply(asyncio.Protocol):
    """Reads the proxy's reply head to CONNECT, and nothing more."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.status: asyncio.Future[int] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._buffer = bytearray()
        self._parser: httptools.HttpResponseParser | None = None
        self._code = 0

    def data_received(self, data: bytes) -> None:
        if self.status.done():
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self.status.set_exception(TunnelRefused("egress proxy reply head too large"))
            return
        if end + 4 != len(self._buffer):
            self.status.set_exception(TunnelRefused("bytes after the egress proxy's reply"))
            return
        self._parser = httptools.HttpResponseParser(self)
        try:
            self._parser.feed_data(bytes(self._buffer))
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _Head):
                self.status.set_exception(TunnelRefused("egress proxy did not answer in HTTP"))
                return
        self.status.set_result(self._code)

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self._code = self._parser.get_status_code()
        raise _Head()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.status.done():
            self.status.set_exception(TunnelRefused("egress proxy closed the connection"))
        if not self.closed.done():
            self.closed.set_result(None)


def connect_request(proxy: EgressProxy, host: str, port: int) -> bytes:
    """The CONNECT request for `host:port`, with the proxy's credentials if it has any."""
    target = authority(host, port).encode("idna")
    lines = [b"CONNECT ", target, b" HTTP/1.1\r\nhost: ", target, b"\r\n"]
    auth = proxy.authorization
    if auth is not None:
        lines += (b"proxy-authorization: ", auth.encode("ascii"), b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


async def open_tunnel(
    loop: asyncio.AbstractEventLoop, proxy: EgressProxy, host: str, port: int
) -> asyncio.Transport:
    """A transport to the proxy, tunnelled to `host:port` and ready for TLS.

    Raises:
        OSError: the proxy could not be reached, or refused (`TunnelRefused`).
    """
    transport, reply = await loop.create_connection(
        lambda: _TunnelReply(loop), proxy.host, proxy.port
    )
    try:
        transport.write(connect_request(proxy, host, port))
        status = await reply.status
    except BaseException:
        transport.abort()
        raise
    if not 200 <= status < 300:
        transport.abort()
        raise TunnelRefused(f"egress proxy answered CONNECT with {status}")
    return transport
