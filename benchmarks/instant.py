"""An instant backend for benchmarks: answers every request with one recorded reply.

    python benchmarks/instant.py PORT STATUS CONTENT_TYPE BODY_FILE

The simulators (`serving-proxy simulate`) parse, score and keep statistics: about as much
CPU per request as the proxy itself. On a two-core machine that CPU comes out of the cell
being measured, so a throughput ratio would measure the backends. This server reads each
request with httptools (the parser uvicorn runs) and writes bytes recorded from a
simulator beforehand, so the answers, and the shadow comparisons, are the simulator's.
Loopback only; stopped by its PID.
"""

from __future__ import annotations

import asyncio
import sys
from http import HTTPStatus
from pathlib import Path

import httptools
import uvloop


def reply_bytes(status: int, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _Answer(asyncio.Protocol):
    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.transport.write(self.reply)


async def serve(port: int, reply: bytes) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Answer(reply), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    port, status, content_type, body_file = argv
    reply = reply_bytes(int(status), content_type, Path(body_file).read_bytes())
    uvloop.run(serve(int(port), reply))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
