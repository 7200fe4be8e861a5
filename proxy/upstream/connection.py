"""One keep-alive HTTP/1.1 connection to a backend, as an asyncio protocol on httptools.

asyncio callbacks only: this module frames each reply (httptools: llhttp, the parser
uvicorn runs for our server side) and tells the waiting exchange when it is complete,
failed or cut short. Writing requests, pooling, timeouts and retries are
`http1.HttptoolsUpstream`'s.

A connection is only ever reused when the server sent exactly one reply and not one byte
more: anything after the end of the reply, in the same read or a later one, is never part
of it and retires the connection, because a stream that carries bytes nobody asked for can
no longer be trusted to frame the next reply (urllib3 and aiohttp refuse such connections
too). A body cut short, by a reset or by the end of the connection before its
Content-Length or last chunk, is an error, never a reply.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import cast

import httptools

from proxy.errors import ProxyError, UpstreamProtocolError

MAX_HEAD_BYTES = 64 * 1024
_CRLF = (b"\r", b"\n")


class ConnectionClosed(Exception):
    """The connection ended before the reply was complete.

    `received`: some of the reply had arrived. `written`: the request had been handed to
    the connection, so the server may have read it and acted on it.
    """

    def __init__(self, *, received: bool, written: bool = True) -> None:
        super().__init__("connection closed")
        self.received = received
        self.written = written


class Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    # The current exchange (set by `_reset`).
    _head_only: bool
    _received: bool
    _head_bytes: int
    _body_bytes: int
    _framed: bool
    _interim: bool
    _keep_alive: bool
    _more: bool
    complete: bool
    status: int
    headers: list[tuple[str, str]]
    body: list[bytes]

    def __init__(self, on_lost: Callable[[Connection], None], max_body: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        # Bytes arrived past the end of a reply: the connection is never reused.
        self.trailing = False
        # Set by the pool once the connection counts against its size; cleared when the
        # slot is given back (after the socket is closed).
        self.counted = False
        self.idle_since = 0.0
        self._poller: select.poll | None = None
        self._max_body = max_body
        self._on_lost = on_lost
        self._waiter: asyncio.Future[None] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._reset(head_only=False)

    # --- one exchange -------------------------------------------------------------------

    def _reset(self, *, head_only: bool) -> None:
        self._head_only = head_only
        self._received = False
        self._head_bytes = 0
        self._body_bytes = 0
        self._framed = False
        self._interim = False
        self._keep_alive = False
        self._more = False
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
        return (
            self.complete
            and self._keep_alive
            and not self.closed
            and not self.trailing
            and not self._head_only
        )

    def stale(self) -> bool:
        """Whether an idle connection must not carry another request: it is closed, or
        the server has sent something (its FIN, most often) that the loop has not yet
        delivered. The same check as urllib3's before it reuses a connection: a socket
        readable while idle is never written to."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return True
        return self._poller is not None and bool(self._poller.poll(0))

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

    def _retire(self) -> None:
        self.trailing = True
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.fileno() >= 0:
            self._poller = select.poll()
            self._poller.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self.complete:
            # Bytes nobody asked for (on an idle connection, or after a whole reply).
            self._retire()
            return
        if not self._received and data[:1] in (b"\r", b"\n"):
            # llhttp skips empty lines before a status line; a reply starts with its
            # status line (h11 agrees), and anything else means a desynchronised stream.
            self._stop(UpstreamProtocolError("bytes before the reply's status line"))
            return
        self._received = True
        if data[-1:] in _CRLF:
            # All but the last byte first: a reply that ends within them leaves at least
            # that byte unread (which llhttp would skip silently were it a CR or LF, as it
            # skips empty lines between messages), and the connection is retired.
            view = memoryview(data)
            stopped = self._feed(parser, view[:-1])
            if self.complete:
                self._retire()
            elif not stopped:
                self._feed(parser, view[-1:])
            return
        # Ending in any other byte, whatever follows the end of a reply in this read ends
        # in a byte llhttp does not skip: it begins another message (`on_message_begin`)
        # or breaks the parse. Either retires the connection; one call into llhttp.
        stopped = self._feed(parser, data)
        if self.complete and (stopped or self._more):
            self._retire()

    def _feed(self, parser: httptools.HttpResponseParser, data: bytes | memoryview) -> bool:
        """Parse `data`; True when a parse error stopped it (after a complete reply, an
        error in what follows changes nothing: the connection is retired for it)."""
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._stop(cause if isinstance(cause, ProxyError) else exc)
            return True
        except httptools.HttpParserError as exc:
            self._stop(exc)
            return True
        except httptools.HttpParserUpgrade:
            # Nothing here asks to switch protocols, so a reply that does is not HTTP/1.1.
            self._stop(UpstreamProtocolError("upstream switched protocols unasked"))
            return True
        return False

    def _stop(self, exc: BaseException) -> None:
        self._parser = None  # whatever arrives next retires the connection
        self._fail(exc)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost finishes the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if exc is None and self.status and not self._framed and not self._interim:
                # A body delimited by the end of the connection: complete only at a clean
                # close, never at a reset.
                self._finish()
            else:
                self._fail(ConnectionClosed(received=self._received))
        self._on_lost(self)

    # --- httptools callbacks ------------------------------------------------------------

    # Once the reply is complete, llhttp goes on with whatever follows it in the same
    # read; those bytes retire the connection, and must not touch the reply.

    def on_message_begin(self) -> None:
        if self.complete:
            self._more = True  # another message after the reply, in the same read

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status:
            return  # a trailer after a chunked body, or a later reply's: not this head
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise UpstreamProtocolError("reply head too large")
        lname = name.lower()
        if lname == b"content-length" or (
            lname == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._framed = True
        # Trailing whitespace is not part of a field value (RFC 9110 §5.5); llhttp keeps it.
        self.headers.append((name.decode("latin-1"), value.rstrip(b" \t").decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
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
            # A reply to HEAD has no body, whatever its Content-Length; llhttp cannot know
            # the request was HEAD, so it is complete here (and the connection not reused).
            self._finish()

    def on_body(self, chunk: bytes) -> None:
        if self.complete:
            return
        self._body_bytes += len(chunk)
        if self._body_bytes > self._max_body:
            raise UpstreamProtocolError("reply body larger than max_reply_bytes")
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        if self.complete:
            return
        if self._interim:
            self._interim = False
            return
        # Read it now: llhttp resets its flags as the callback returns.
        assert self._parser is not None
        self._keep_alive = self._parser.should_keep_alive()
        self._finish()
