"""Servers that break HTTP as no ASGI app under uvicorn can (reset, hang, garbage)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sim.serve import serve_broken

pytestmark = pytest.mark.anyio


async def test_broken_reset_resets_the_connection() -> None:
    async with serve_broken("reset") as url, httpx.AsyncClient(trust_env=False) as client:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await client.post(url + "/invocations", json={"inputs": [1]})


async def test_broken_reset_is_a_tcp_reset() -> None:
    # Seen from a raw socket, the reset is an RST (ECONNRESET), not an orderly close (b"").
    async with serve_broken("reset") as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"POST /invocations HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            with pytest.raises(ConnectionResetError):
                await reader.read(1)
        finally:
            writer.transport.abort()


async def test_broken_hang_never_answers() -> None:
    timeout = httpx.Timeout(5.0, read=0.05)
    async with (
        serve_broken("hang") as url,
        httpx.AsyncClient(timeout=timeout, trust_env=False) as client,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await client.post(url + "/invocations", json={"inputs": [1]})


async def test_broken_garbage_is_not_http() -> None:
    async with serve_broken("garbage") as url, httpx.AsyncClient(trust_env=False) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(url + "/invocations", json={"inputs": [1]})


async def test_broken_server_refuses_unknown_modes_and_hosts() -> None:
    with pytest.raises(ValueError, match="mode"):
        async with serve_broken("slow"):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="loopback"):
        async with serve_broken("hang", host="0.0.0.0"):
            pass
