"""The HTTP protocol the proxy runs under: uvicorn's httptools protocol, one write per reply.

uvicorn writes a response's head and its body with two `transport.write` calls, and with
uvloop each is its own `send()` system call, often its own TCP segment. On these machines
that second system call was the largest single cost of a proxied request (py-spy: ~16% of
the proxy's time in the head's write alone). `CoalescingTransport` gathers the writes made
in one event-loop step and sends them with one call, so a buffered reply leaves as one
segment. The call is made as soon as uvicorn reports the response complete, or at the end
of the step, whichever comes first: the app's work after its last `send` (the access log,
the metrics) must not hold back a reply that is already whole. Nothing is reordered,
delayed past the current step, or dropped: `close()` flushes first, and flow control still
sees the real transport.

The same protocol enforces the limits a connection must keep before the app sees a
request (`proxy.serverlimits.ServerLimits`, from `limits:`; README "Limits and hardening", §6.5):

- `header_bytes`: bytes are counted before they reach the parser, and a head over the
  limit is answered 431 (the request line alone: 414) without being buffered further.
  httptools joins each header's pieces by `bytes` concatenation, one piece per read, so
  an unbounded head costs time quadratic in its size; bounded, the cost stays linear.
- `head_timeout_s`: a head not whole within it (nothing sent, half a head, a keep-alive
  connection stopped mid-head) closes the connection.
- `body_timeout_s`: a body not whole within it is answered 408 by the app, or by this
  protocol when the app is not reading it, and the connection closes.
- `max_connections`: a connection over this process's share is answered 503 at once.
  Not uvicorn's `limit_concurrency`: that one reads the head first, answers in plain
  text, and also counts requests in flight, which `limits.max_in_flight` already bounds.

A refused connection is answered, half-closed and read to the end for a moment before it
closes (a lingering close: closing with unread input resets the connection, and the
client could lose the answer). Each is logged once, with the address and the reason only.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from proxy.asgi import BODY_TIMEOUT
from proxy.errors import BodyTimeout, HeadTooLarge, Overloaded, ProxyError, render
from proxy.serverlimits import (
    BODY_GRACE_S,
    DEFAULT_LIMITS,
    LINGER_S,
    REQUEST_LINE_SLACK,
    TIMER_SLACK_S,
    ServerLimits,
    raw_reply,
)

LOGGER = logging.getLogger("serving_proxy")

# CPython's default is 700: a proxied request leaves about 30 container objects alive while
# it waits on its upstream, so at concurrency 32 the young generation filled every ~23
# requests and each collection walked every request in flight (measured: ~5% of the
# proxy's CPU, 0.4 ms per collection). At 5,000 the short-lived objects are freed by
# reference counting long before a collection comes, and collections become rare.
GC_GEN0_THRESHOLD = 5_000


# glibc serves an allocation this large with its own mmap, returned to the system on free.
# glibc raises the threshold each time such a block is freed (up to 32 MiB), after which a
# request body's buffers come from the heap and its high-water mark stays resident; a fixed
# threshold keeps a 16 MB request from leaving the process larger than before it.
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold (see `MMAP_THRESHOLD_BYTES`); False where the C library
    is not glibc (musl, macOS), which is left as it is."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def tune_memory() -> None:
    """Tune the allocator (`tune_malloc`) and the cyclic garbage collector for a
    long-running server process.

    Call once, after the app is built and before serving: `gc.freeze()` moves everything
    alive at that point (modules, config, the app) out of the collector's sight, so the
    rare full collections no longer walk the whole heap, and the young-generation
    threshold is raised (see `GC_GEN0_THRESHOLD`). Cycles are still collected.
    """
    tune_malloc()
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


class CoalescingTransport:
    """A transport wrapper whose `write`s in one loop step become one write."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Write what is pending now, as one write."""
        self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        # Everything else (extra info, reading, flow-control limits) is the real transport's.
        return getattr(self._transport, name)


class _Refused(Exception):
    """Raised in a parser callback to stop the parser; the refusal is on the protocol."""


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `CoalescingTransport`, within `ServerLimits`.

    uvicorn builds one per connection with its own arguments; `serve` passes `limits`
    through a `functools.partial` of this class.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ServerLimits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        # The head being read: its bytes counted so far, from the read it began in. A head
        # that began inside a read which started in a body (pipelining) had bytes nobody
        # counted: it is measured once whole (`_head_uncounted`).
        self._in_head = True
        self._head_bytes = 0
        self._read_in_head = False
        self._head_uncounted = False
        self._messages = 0
        # One timer per connection for its current deadline (head or body): a later
        # deadline only moves `_due`, and the timer re-arms itself when it fires early.
        self._due: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._body_overdue = False
        # A refusal found inside a parser callback, and one already answered (lingering).
        self._refusing: ProxyError | None = None
        self._refused = False
        self._linger: asyncio.TimerHandle | None = None
        # A refusal waiting for the replies to earlier pipelined requests to go out.
        self._deferred: bytes | None = None

    # --- the connection -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvloop's TCPTransport is not an asyncio.Transport subclass, only alike.
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        if len(self.connections) > self.limits.max_connections:
            self._refuse(Overloaded("Too many open connections."), "over max_connections")
            return
        self._set_due(self.limits.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._due = None
        for timer in (self._timer, self._linger):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read to the end and dropped
        self._unset_keepalive_if_required()
        view: bytes | memoryview = data
        while True:
            if not self._in_head:
                self._read_in_head = False
                self._feed(view)
                return
            left = self.limits.header_bytes - self._head_bytes
            self._read_in_head = True
            if len(view) <= left:
                self._head_bytes += len(view)
                self._feed(view)
                return
            # More than the head may still hold: the parser gets the head's room and no
            # more, so an oversized head is never buffered whole.
            view = memoryview(view)
            self._head_bytes += left
            ended = self._messages
            if left and not self._feed(view[:left]):
                return
            if self._in_head and self._messages == ended:
                self._refuse_head()
                return
            # The head ended within its room (or a message ended and a new head began):
            # the rest of the read is counted from where the parser now is.
            view = view[left:]

    def _feed(self, data: bytes | memoryview) -> bool:
        """Feed the parser as uvicorn does; False once the connection is answered for."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        except httptools.HttpParserError:
            refusing, self._refusing = self._refusing, None
            if refusing is not None:
                self._refuse(refusing, refusing.message)
            else:
                message = "Invalid HTTP request received."
                self.logger.warning(message)
                self.send_400_response(message)
            return False
        return True

    # --- parser callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_uncounted = not self._read_in_head
        if self._due is None:  # a keep-alive connection's next head: its clock starts
            self._set_due(self.limits.head_timeout_s)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_uncounted and self._head_size() > self.limits.header_bytes:
            self._refusing = self._head_error()
            raise _Refused()
        self._body_overdue = False
        self._set_due(self.limits.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0
        self._read_in_head = False  # the rest of this read was not counted
        self._messages += 1
        self._due = None

    def on_response_complete(self) -> None:
        # uvicorn calls this from the `send` of the last body chunk, before control returns
        # to the app: the reply is whole, so it leaves now rather than after the app's own
        # bookkeeping for the request has run.
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.flush()
        last = self._deferred is not None and not self.pipeline
        super().on_response_complete()
        if last and self._deferred is not None:
            self._unset_keepalive_if_required()
            self._answer_and_linger(self._deferred)

    # --- the head's size ------------------------------------------------------------------

    def _head_size(self) -> int:
        """A whole head's size from its parts (without its optional whitespace)."""
        size = len(self.url) + REQUEST_LINE_SLACK
        for name, value in self.headers:
            size += len(name) + len(value) + 4
        return size

    def _head_error(self) -> HeadTooLarge:
        # The parser hands the URL over as it reads it: a URL that fills the room means
        # the request line alone is over the limit.
        url: bytes = getattr(self, "url", b"")  # set when the first message begins
        limit = self.limits.header_bytes
        return HeadTooLarge(limit, request_line=len(url) + REQUEST_LINE_SLACK > limit)

    def _refuse_head(self) -> None:
        error = self._head_error()
        self._refuse(error, error.message)

    # --- deadlines ------------------------------------------------------------------------

    def _set_due(self, seconds: float) -> None:
        due = self.loop.time() + seconds
        self._due = due
        if self._timer is None or due < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(due, self._on_timer)
            self._timer_at = due

    def _on_timer(self) -> None:
        self._timer = None
        due = self._due
        if due is None or self._refused or self.transport.is_closing():
            return
        if due - self.loop.time() > TIMER_SLACK_S:  # the deadline moved on since
            self._timer = self.loop.call_at(due, self._on_timer)
            self._timer_at = due
            return
        self._due = None
        if self._in_head:
            self._log(f"no whole request head within {self.limits.head_timeout_s:g} s")
            self.transport.close()
        else:
            self._body_late()

    def _body_late(self) -> None:
        limit = self.limits.body_timeout_s
        cycle = self.cycle
        if self.pipeline:
            # Queued behind a request still being served: its body is not being read yet.
            self._set_due(limit)
        elif cycle.response_started:
            # Answered already (413, 503): the rest of the body never came.
            self._log(f"request body not received within {limit:g} s")
            self.transport.close()
        elif not self._body_overdue:
            # The app answers 408 from its body reader (proxy.middleware), so that the
            # request's record says so; it is woken to read this mark.
            self._body_overdue = True
            scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
            scope[BODY_TIMEOUT] = limit
            cycle.message_event.set()
            self._log(f"request body not received within {limit:g} s")
            self._set_due(BODY_GRACE_S)
        else:
            self._refuse(BodyTimeout(limit), None)  # logged when it fell due

    # --- refusing -------------------------------------------------------------------------

    def _refuse(self, error: ProxyError, reason: str | None) -> None:
        """Answer `error` and close: half-close at once, read and drop what the client
        still sends for `LINGER_S` at most (or until it closes), then close."""
        self._refused = True
        self._due = None
        if reason is not None:
            self._log(reason)
        answer = raw_reply(render(error), self.server_state.default_headers)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.more_body:
                # An earlier pipelined request is being served: the refusal follows its
                # reply (and those queued behind it); nothing more is read meanwhile.
                self._deferred = answer
                self.flow.pause_reading()
                return
            if cycle.response_started:  # half a reply is out: nothing can follow it
                self.transport.close()
                return
            cycle.disconnected = True  # the app's reply, if it comes, is dropped
            cycle.message_event.set()
        self._answer_and_linger(answer)

    def _answer_and_linger(self, answer: bytes) -> None:
        self._deferred = None
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        self.flow.resume_reading()
        self._linger = self.loop.call_later(LINGER_S, transport.close)

    def _log(self, reason: str) -> None:
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "an unknown peer"
        LOGGER.warning("closing the connection from %s: %s", peer, reason)
