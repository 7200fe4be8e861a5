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
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# CPython's default is 700: a proxied request leaves about 30 container objects alive while
# it waits on its upstream, so at concurrency 32 the young generation filled every ~23
# requests and each collection walked every request in flight (measured: ~5% of the
# proxy's CPU, 0.4 ms per collection). At 5,000 the short-lived objects are freed by
# reference counting long before a collection comes, and collections become rare.
GC_GEN0_THRESHOLD = 5_000


def tune_gc() -> None:
    """Tune the cyclic garbage collector for a long-running server process.

    Call once, after the app is built and before serving: `gc.freeze()` moves everything
    alive at that point (modules, config, the app) out of the collector's sight, so the
    rare full collections no longer walk the whole heap, and the young-generation
    threshold is raised (see `GC_GEN0_THRESHOLD`). Cycles are still collected.
    """
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

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        # Everything else (extra info, reading, flow-control limits) is the real transport's.
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # uvloop's TCPTransport is not an asyncio.Transport subclass, only alike.
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        # uvicorn calls this from the `send` of the last body chunk, before control returns
        # to the app: the reply is whole, so it leaves now rather than after the app's own
        # bookkeeping for the request has run.
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.flush()
        super().on_response_complete()
