"""The framing between the proxy and its shadow worker: messages over one stream socket.

All messages sent in one loop turn (or before the connection is made) leave as one frame,
a pickled list behind its 4-byte length: one pickle call and one write per turn rather
than per message. Pickle, because both ends are this package and the peer is the
proxy's own child on an unnamed socket pair.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Callable
from typing import Any

LENGTH = struct.Struct("!I")


class Channel(asyncio.Protocol):
    """Messages both ways; `on_message` for each one received, `on_closed` once."""

    def __init__(self, on_message: Callable[[Any], None], on_closed: Callable[[], None]) -> None:
        self._on_message = on_message
        self._on_closed = on_closed
        self._transport: asyncio.Transport | None = None
        self._inbox = bytearray()
        self._outbox: list[Any] = []

    def send(self, message: object) -> None:
        if not self._outbox and self._transport is not None:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(message)

    def _flush(self) -> None:
        if not self._outbox or self._transport is None or self._transport.is_closing():
            return
        frame = pickle.dumps(self._outbox, pickle.HIGHEST_PROTOCOL)
        self._outbox.clear()
        self._transport.write(LENGTH.pack(len(frame)) + frame)

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._flush()

    def data_received(self, data: bytes) -> None:
        inbox = self._inbox
        inbox += data
        start = 0
        while len(inbox) - start >= LENGTH.size:
            (size,) = LENGTH.unpack_from(inbox, start)
            end = start + LENGTH.size + size
            if len(inbox) < end:
                break
            messages = pickle.loads(inbox[start + LENGTH.size : end])
            start = end
            for message in messages:
                self._on_message(message)
        del inbox[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._on_closed()
