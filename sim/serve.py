"""Running simulators on loopback: an app under uvicorn, and servers that break HTTP.

Loopback only: every host is checked before anything listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import AsyncIterator
from typing import Final, Literal, get_args

import uvicorn
from starlette.types import ASGIApp

from proxy.server import CoalescingHttpToolsProtocol

BrokenMode = Literal["reset", "hang", "garbage"]

DEFAULT_HOST: Final = "127.0.0.1"

_GARBAGE: Final = b"SIMULATOR GARBAGE \x00\xff this is not HTTP\r\n\r\n"
_MAX_HEAD_BYTES: Final = 64 * 1024


def check_loopback(host: str) -> None:
    """Accept `localhost` and loopback addresses only.

    Raises:
        ValueError: any other host.
    """
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the simulator listens on loopback only, not {host!r}")


def serve_app(app: ASGIApp, host: str, port: int) -> int:
    """Serve `app` under uvicorn until stopped; the exit status of the command."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        # One write per reply, as the proxy serves: the simulator stands in for a remote
        # endpoint, so the less of the benchmarks' shared CPU it takes the better.
        http=CoalescingHttpToolsProtocol,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind
        return exc.code if isinstance(exc.code, int) else 1
    return 0


@contextlib.asynccontextmanager
async def serve_broken(mode: BrokenMode, *, host: str = DEFAULT_HOST) -> AsyncIterator[str]:
    """Run a TCP server that breaks HTTP in ways an app under uvicorn cannot; yield its URL.

    Each connection's request head is read first, so the client has sent its request and is
    waiting for an answer when the server:

    - `reset`: closes with SO_LINGER 0, so the client sees a TCP RST (connection reset);
    - `hang`: never answers, until the client gives up or the server stops (timeouts);
    - `garbage`: writes bytes that are not an HTTP response, then closes (protocol error).

    Runs on the caller's event loop; open connections are aborted on exit.
    """
    if mode not in get_args(BrokenMode):
        raise ValueError(f"mode must be one of {get_args(BrokenMode)}, not {mode!r}")
    check_loopback(host)
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                await reader.readuntil(b"\r\n\r\n")
            if mode == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            elif mode == "garbage":
                writer.write(_GARBAGE)
                await writer.drain()
                writer.close()
            else:
                while await reader.read(_MAX_HEAD_BYTES):
                    pass
                writer.close()
        except ConnectionError:
            writer.transport.abort()
        finally:
            writers.discard(writer)

    server = await asyncio.start_server(handle, host, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.close()
        for writer in list(writers):
            writer.transport.abort()
        await server.wait_closed()
