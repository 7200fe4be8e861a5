"""One keep-alive HTTP/1.1 connection to a backend, as an asyncio protocol on httptools.

asyncio callbacks only: this module frames each reply (httptools: llhttp, the parser
uvicorn runs for our server side) and tells the waiting exchange when it is complete,
failed or cut short. Writing requests, pooling, timeouts and retries are
`http1.HttptoolsUpstream`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import httptools

from proxy.errors import UpstreamProtocolError

MAX_HEAD_BYTES = 64 * 1024


class ConnectionClosed(Exception):
    """The connection ended before the reply was complete."""

    def __init__(self, received: bool) -> None:
        super().__init__("connection closed")
        self.received = received


class Connection(asyncio.Protocol):
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

    def __init__(self, on_lost: Callable[[Connection], None]) -> None:
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
                self._fail(ConnectionClosed(self._received))
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
