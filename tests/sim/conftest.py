"""Fixtures for the simulator tests: the asyncio backend and a client on an app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette

from tests.servers import LiveServer
from tests.sim.support import Connect


@pytest.fixture
def anyio_backend() -> str:
    # Pinned here, not only in tests/conftest.py: serve_broken is built on asyncio's streams.
    return "asyncio"


@pytest.fixture(params=["in-process", "loopback"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """Open a client on an app, in-process or through uvicorn on a loopback socket."""
    async with contextlib.AsyncExitStack() as stack:

        async def _connect(app: Starlette) -> httpx.AsyncClient:
            if request.param == "loopback":
                server = stack.enter_context(LiveServer(app))
                client = httpx.AsyncClient(base_url=server.url, trust_env=False)
            else:
                transport = httpx.ASGITransport(app)
                client = httpx.AsyncClient(transport=transport, base_url="http://sim")
            return await stack.enter_async_context(client)

        yield _connect
