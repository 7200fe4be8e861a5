"""The coalescing transport under the proxy's uvicorn protocol (proxy/server.py)."""

from __future__ import annotations

import asyncio
import functools
import pickle
import platform
import subprocess
import sys
import threading
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.config.backends import Limits
from proxy.server import CoalescingHttpToolsProtocol, CoalescingTransport
from proxy.serverlimits import ServerLimits
from tests.servers import LiveServer

pytestmark = pytest.mark.anyio


class RecordingTransport:
    """Stands in for the socket transport: records each write as one system call."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def wrap() -> tuple[CoalescingTransport, RecordingTransport]:
    inner = RecordingTransport()
    return CoalescingTransport(inner, asyncio.get_running_loop()), inner  # type: ignore[arg-type]


async def test_writes_in_one_step_leave_as_one_write() -> None:
    transport, inner = wrap()
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.writelines([b"[1, ", b"2]"])
    assert inner.writes == []
    assert transport.get_write_buffer_size() == 25
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\n[1, 2]"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert inner.writes[1:] == [b"next"]


async def test_close_flushes_first_and_abort_drops() -> None:
    transport, inner = wrap()
    transport.write(b"last bytes")
    transport.close()
    assert (inner.writes, inner.closed) == ([b"last bytes"], True)

    transport, inner = wrap()
    transport.write(b"never sent")
    transport.abort()
    await asyncio.sleep(0)
    assert (inner.writes, inner.aborted) == ([], True)


async def test_other_attributes_are_the_real_transports() -> None:
    transport, _ = wrap()
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)


def test_uvicorn_serves_through_it_with_keep_alive() -> None:
    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    app = Starlette(routes=[Route("/e", echo, methods=["POST"])])
    with (
        LiveServer(app, http=CoalescingHttpToolsProtocol, loop="uvloop") as server,
        httpx.Client() as client,
    ):
        answers = [client.post(server.url + "/e", content=b"x" * n) for n in (0, 1, 70_000)]
    assert [len(a.content) for a in answers] == [0, 1, 70_000]
    assert all(a.status_code == 200 for a in answers)


def test_a_whole_reply_leaves_before_the_apps_work_after_it() -> None:
    # The app blocks its event loop after its last `send` until the client has the reply:
    # a reply held until the end of the loop step would never arrive (bounded by timeouts),
    # so the test fails on order, not on time.
    received = threading.Event()
    finished: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"whole"})
        finished.append(received.wait(timeout=10))  # e.g. access log and metrics

    with LiveServer(app, http=CoalescingHttpToolsProtocol, loop="uvloop") as server:
        with httpx.Client(timeout=5) as client:
            answer = client.post(server.url + "/", content=b"x")
        received.set()
        with httpx.Client(timeout=15) as client:
            again = client.post(server.url + "/", content=b"y")  # served once the loop is free
    assert (answer.status_code, answer.content) == (200, b"whole")
    assert again.status_code == 200
    assert finished[0] is True


def test_tune_memory_freezes_the_heap_and_raises_the_young_threshold() -> None:
    # In a child: the test process's own collector is none of this test's business.
    code = (
        "import gc\n"
        "from proxy.server import GC_GEN0_THRESHOLD, tune_memory\n"
        "before = gc.get_threshold()\n"
        "tune_memory()\n"
        "after = gc.get_threshold()\n"
        "class Node: pass\n"
        "a, b = Node(), Node(); a.b, b.a = b, a; del a, b\n"
        "print(after[0] == GC_GEN0_THRESHOLD, after[1:] == before[1:],"
        " gc.get_freeze_count() > 1000, gc.collect() >= 2)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["True", "True", "True", "True"]


def test_each_worker_holds_its_share_of_the_connection_limit() -> None:
    limits = Limits(max_connections=10, header_bytes=2048, head_timeout_s=3, body_timeout_s=4)
    assert ServerLimits.of(limits) == ServerLimits(2048, 3.0, 4.0, 10)
    assert ServerLimits.of(limits, workers=3).max_connections == 4  # rounded up
    assert ServerLimits.of(Limits(max_connections=2), workers=8).max_connections == 1


def test_the_protocol_with_its_limits_survives_the_trip_to_a_worker_process() -> None:
    # `serve` hands uvicorn a partial; with several workers uvicorn pickles it for each.
    protocol = functools.partial(CoalescingHttpToolsProtocol, limits=ServerLimits.of(Limits()))
    again = pickle.loads(pickle.dumps(protocol))
    assert (again.func, again.keywords) == (protocol.func, protocol.keywords)


def test_tune_malloc_fixes_the_mmap_threshold_where_glibc_runs() -> None:
    # In a child: the setting is process-wide and lasts the process's life.
    code = "from proxy.server import tune_malloc\nprint(tune_malloc())\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(platform.libc_ver()[0] == "glibc")
