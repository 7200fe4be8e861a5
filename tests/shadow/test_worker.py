"""The shadow worker process (`shadow.isolation: process`), on real sockets.

In-process apps (as in `tests/test_shadow.py`, whose helpers these share) and one real
`serving-proxy serve` for the SIGTERM path. What is asserted: the calls are made by
another process, a worker that dies costs only its jobs in flight and is replaced, it
outlives neither a Ctrl-C aimed at its group nor the proxy, and shutdown stops it by PID.
Every wait polls under a deadline; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from proxy.exchange import Inbound
from proxy.models import Backend, ModelRef, Reply
from proxy.shadow.channel import Channel
from proxy.shadow.job import ShadowJob
from proxy.shadow.process import serve
from tests.integration.proxy_process import ProxyProcess
from tests.servers import LiveServer
from tests.shadow.test_runner import (
    AUTH,
    DEADLINE_S,
    HEADERS,
    SPLIT,
    TOKEN,
    faults,
    invoke,
    make_config,
    proxy,
    settled,
    view,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.usefixtures("reset_simulators"),
]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def shadow_view(client: httpx.AsyncClient, **wanted: Any) -> dict[str, Any]:
    """The model view once its `shadow` section holds `wanted` (or the deadline passed)."""
    with anyio.move_on_after(DEADLINE_S):
        while True:
            v = await view(client)
            if all(v["shadow"][key] == value for key, value in wanted.items()):
                return v
            await anyio.sleep(0.02)
    return await view(client)


async def test_shadow_calls_are_made_by_a_worker_process_stopped_at_shutdown(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    async with proxy(make_config(serverless.url, legacy)) as client:
        before = await view(client)
        assert before["shadow"]["isolation"] == "process"
        assert before["shadow"]["worker_pid"] is None  # started by the first shadow call
        r = await invoke(client)
        assert (r.status_code, r.json()) == (200, [3.5, 7.0])
        v = await settled(client, 1)
        assert (v["parity"]["match"], v["shadow"]["in_flight"]) == (1, 0)
        pid = v["shadow"]["worker_pid"]
        assert pid is not None
        assert pid != os.getpid()
        assert alive(pid)
    assert not alive(pid)


async def test_inline_isolation_starts_no_process(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    config = make_config(serverless.url, legacy, shadow={"isolation": "inline"})
    async with proxy(config) as client:
        await invoke(client)
        v = await settled(client, 1)
    assert v["parity"]["match"] == 1
    assert (v["shadow"]["isolation"], v["shadow"]["worker_pid"]) == ("inline", None)


async def test_a_dead_worker_costs_its_jobs_in_flight_and_is_replaced(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    await faults(serverless, delay_ms=4000)
    async with proxy(make_config(serverless.url, legacy)) as client:
        assert (await invoke(client)).status_code == 200
        v = await view(client)
        pid = v["shadow"]["worker_pid"]
        assert (pid is not None, v["shadow"]["in_flight"]) == (True, 1)
        os.kill(pid, signal.SIGKILL)
        v = await settled(client, 1)
        assert (v["parity"]["shadow_error"], v["shadow"]["in_flight"]) == (1, 0)
        assert v["mismatches"][-1]["detail"] == "shadow worker exited"

        await faults(serverless, delay_ms=0)
        # The next job starts a new worker (at most one start a second: a job in between
        # is a shadow error too). The primary answers never change.
        with anyio.fail_after(DEADLINE_S):
            while (await view(client))["parity"]["match"] == 0:
                r = await invoke(client)
                assert (r.status_code, r.json()) == (200, [3.5, 7.0])
                await anyio.sleep(0.05)
        v = await view(client)
        assert v["shadow"]["worker_pid"] not in (None, pid)


async def test_the_worker_ignores_an_interrupt_aimed_at_it(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    # A Ctrl-C reaches a terminal's whole process group: the worker must stay up and
    # leave stopping to the proxy's own shutdown.
    async with proxy(make_config(serverless.url, legacy)) as client:
        await invoke(client)
        pid = (await settled(client, 1))["shadow"]["worker_pid"]
        os.kill(pid, signal.SIGINT)
        await invoke(client)
        v = await settled(client, 2)
        assert (v["parity"]["match"], v["shadow"]["worker_pid"]) == (2, pid)


async def test_sigterm_to_the_proxy_stops_its_worker(
    serverless: LiveServer, legacy: LiveServer, tmp_path: Path
) -> None:
    doc = {
        "backends": {"serverless": {"url": serverless.url}, "legacy": {"url": legacy.url}},
        "models": {"iris": {"serverless_percent": 0, "shadow_percent": 100}},
        "logging": {"access_log": False},
    }
    with ProxyProcess(doc, tmp_path, env={"SERVING_PROXY_ADMIN_TOKEN": TOKEN}) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as client:
            r = await client.post("/model/iris/1/invocations", content=SPLIT, headers=HEADERS)
            assert r.status_code == 200
            v = await settled(client, 1)
        pid = v["shadow"]["worker_pid"]
        assert v["parity"]["match"] == 1
        assert pid is not None
        assert alive(pid)
        server.terminate()
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
        assert not alive(pid)
        assert "did not stop" not in server.log()


# --- the worker's half, in this process (coverage does not follow the child) ------------


async def test_the_worker_answers_each_job_on_its_socket(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    """`python -m proxy.shadow.process`'s loop, run here on one end of a socket pair: a job
    framed as the proxy frames it comes back as the outcome the inline mirror reaches; a
    job it cannot read comes back as a shadow error, not as silence."""
    config = make_config(serverless.url, legacy)
    ours, theirs = socket.socketpair()
    worker = asyncio.ensure_future(serve(theirs.detach(), configure_logs=False))
    outcomes: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    channel = Channel(outcomes.put_nowait, lambda: None)
    loop = asyncio.get_running_loop()
    await loop.create_unix_connection(lambda: channel, sock=ours)
    ref = ModelRef("iris", "1", "1", "iris")
    inbound = Inbound(
        ref,
        "/model/iris/1/invocations",
        "/model/iris/1/invocations",
        "",
        None,
        [("content-type", HEADERS["content-type"])],
        SPLIT,
        "r1",
    )

    def job(primary_body: bytes) -> ShadowJob:
        primary = Reply(200, primary_body, "application/json")
        return ShadowJob("iris", "r1", Backend.LEGACY, Backend.SERVERLESS, primary, inbound)

    channel.send(config)
    channel.send((1, job(b"[3.5, 7.0]"), False))
    channel.send((2, job(b"[3.5, 7.5]"), True))
    channel.send((3, "not a job"))
    with anyio.fail_after(DEADLINE_S):
        got = {m[0]: m[1] for m in [await outcomes.get() for _ in range(3)]}
    channel.close()
    with anyio.fail_after(DEADLINE_S):
        await worker  # the socket closed: the worker's loop ends
    assert got[1].result.matched
    assert got[1].call is not None
    assert got[1].call[0] == 200
    assert (got[2].result.verdict, got[2].result.path) == ("value_mismatch", "$[1]")
    assert got[2].answers is not None
    assert got[2].answers[1].body == b"[3.5, 7.0]"
    assert (got[3].result.verdict, got[3].result.detail) == ("shadow_error", "BUG ValueError")
