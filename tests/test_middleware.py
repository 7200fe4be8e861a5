"""Pure ASGI middleware around a tiny inner app, driven in-process (architecture §1.5)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from proxy import jsoncodec
from proxy.asgi import BODY_TIMEOUT
from proxy.budget import MemoryBudget
from proxy.errors import BodyTimeout, Overloaded, PayloadTooLarge
from proxy.middleware import (
    BodyLimitMiddleware,
    RequestContextMiddleware,
    RequestIds,
    record_of,
)
from proxy.telemetry.record import ExchangeRecord

pytestmark = pytest.mark.anyio


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    record = record_of(scope)
    payload = {"length": len(body), "request_id": record.request_id if record else None}
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": jsoncodec.dumps(payload)})


async def boom(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("bug")


def client(app: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 123))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://proxy")


async def test_request_id_is_generated_echoed_and_recorded() -> None:
    seen: list[ExchangeRecord] = []
    app = RequestContextMiddleware(echo_length, on_complete=seen.append)
    async with client(app) as c:
        r = await c.post("/x", content=b"abc")
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    assert len(rid) == 32
    assert r.json() == {"length": 3, "request_id": rid}
    assert len(seen) == 1
    assert (seen[0].status, seen[0].client, seen[0].path) == (200, "10.0.0.1", "/x")
    assert seen[0].total_s > 0


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        pytest.param("abc-123", True, id="plain"),
        pytest.param("a" * 129, False, id="too-long"),
        pytest.param("a b", False, id="space"),
        pytest.param("x\u00e9", False, id="non-ascii"),
    ],
)
async def test_client_request_id_kept_only_when_plain(sent: str, kept: bool) -> None:
    app = RequestContextMiddleware(echo_length, on_complete=lambda r: None)
    async with client(app) as c:
        r = await c.get("/", headers={"x-request-id": sent.encode("utf-8")})
    assert (r.headers["x-request-id"] == sent) is kept


async def test_a_bug_is_recorded_once_as_500() -> None:
    seen: list[ExchangeRecord] = []
    app = RequestContextMiddleware(boom, on_complete=seen.append)
    async with client(app) as c:
        with pytest.raises(RuntimeError):
            await c.get("/")
    assert [(r.status, r.flag) for r in seen] == [(500, "BUG")]


async def test_declared_length_over_limit_is_refused_before_reading() -> None:
    seen: list[ExchangeRecord] = []
    inner = BodyLimitMiddleware(echo_length, max_body_bytes=10)
    app = RequestContextMiddleware(inner, on_complete=seen.append)
    async with client(app) as c:
        r = await c.post("/", content=b"x" * 11)
        ok = await c.post("/", content=b"x" * 10)
    assert r.status_code == 413
    assert r.json() == {
        "error_code": "BAD_REQUEST",
        "message": "Request body exceeds the 10 byte limit.",
    }
    assert r.headers["content-type"] == "application/json"
    assert seen[0].flag == "PTL"
    assert ok.json()["length"] == 10


async def sixteen_bytes_in_chunks() -> AsyncIterator[bytes]:
    """A body with no Content-Length: httpx streams it chunked."""
    for _ in range(4):
        yield b"xxxx"


async def test_streamed_body_over_limit_raises_inside_the_app() -> None:
    app = BodyLimitMiddleware(echo_length, max_body_bytes=10)

    async with client(app) as c:
        with pytest.raises(PayloadTooLarge):
            await c.post("/", content=sixteen_bytes_in_chunks())


async def test_a_declared_body_holds_its_room_until_the_reply_is_done() -> None:
    budget = MemoryBudget(100, wait_s=0.05)
    held: list[int] = []

    async def spy(scope: Scope, receive: Receive, send: Send) -> None:
        held.append(budget.used)
        await echo_length(scope, receive, send)

    app = BodyLimitMiddleware(spy, max_body_bytes=1000, budget=budget)
    async with client(app) as c:
        ok = await c.post("/", content=b"x" * 60)
        assert budget.take_now(50)
        refused = await c.post("/", content=b"x" * 60)  # 50 + 60 > 100, for 50 ms
    assert (ok.status_code, held, budget.used) == (200, [60], 50)
    assert refused.status_code == 503
    assert refused.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


async def test_a_streamed_body_is_admitted_as_it_arrives() -> None:
    budget = MemoryBudget(10, wait_s=0.05)
    app = BodyLimitMiddleware(echo_length, max_body_bytes=1000, budget=budget)

    async with client(app) as c:
        with pytest.raises(Overloaded):
            await c.post("/", content=sixteen_bytes_in_chunks())
    assert budget.used == 0  # what it took is given back


async def test_a_body_the_server_marks_overdue_raises_408_in_the_app() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def late() -> Message:
            scope[BODY_TIMEOUT] = 30.0  # as proxy.server marks it, then wakes the reader
            return {"type": "http.request", "body": b"", "more_body": True}

        await BodyLimitMiddleware(echo_length, max_body_bytes=10)(scope, late, send)

    async with client(app) as c:
        with pytest.raises(BodyTimeout) as info:
            await c.post("/", content=b"x")
    assert info.value.to_reply().status == 408
    assert ("connection", "close") in info.value.to_reply().headers


def test_generated_request_ids_are_unique_32_hex_digits() -> None:
    ids = RequestIds()
    drawn = [ids.next() for _ in range(10_000)]
    assert len(set(drawn)) == len(drawn)
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in drawn)
    # Another process (another instance) draws another prefix: ids never collide.
    assert RequestIds().next()[:20] != drawn[0][:20]


def test_a_forked_child_draws_its_own_request_id_prefix() -> None:
    ids = RequestIds()
    parent = ids.next()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id, then leave without running pytest's teardown
        os.write(write, ids.next().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child[:20] != parent[:20]
