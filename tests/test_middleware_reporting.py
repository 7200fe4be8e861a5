"""The middleware's reporting duties (issue 4): Server-Timing and the hashed client key.

A tiny inner app stands in for the handlers and writes the timings a handler would.
"""

from __future__ import annotations

import re

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from proxy.config import ClientKeyConfig
from proxy.middleware import (
    RequestContextMiddleware,
    client_key_reader,
    hash_client_key,
    record_of,
    server_timing,
)
from proxy.models import Backend, ExchangeRecord

pytestmark = pytest.mark.anyio
TIMING = re.compile(
    r'^proxy;dur=[0-9.]+, upstream;dur=12\.000;desc="serverless", translate;dur=0\.500$'
)


async def translated(scope: Scope, receive: Receive, send: Send) -> None:
    record = record_of(scope)
    assert record is not None
    record.backend, record.upstream_s, record.translate_s = Backend.SERVERLESS, 0.012, 0.0005
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"[1]"})


async def local(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def client(app: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 123))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://proxy")


async def test_server_timing_names_the_three_parts() -> None:
    seen: list[ExchangeRecord] = []
    app = RequestContextMiddleware(translated, on_complete=seen.append, server_timing=True)
    async with client(app) as c:
        r = await c.post("/model/iris/1/invocations")
    assert TIMING.match(r.headers["server-timing"]), r.headers["server-timing"]
    assert r.headers["x-request-id"] == seen[0].request_id


async def test_a_local_reply_has_only_the_proxy_part() -> None:
    app = RequestContextMiddleware(local, on_complete=lambda r: None, server_timing=True)
    async with client(app) as c:
        r = await c.get("/nope")
    assert re.fullmatch(r"proxy;dur=[0-9.]+", r.headers["server-timing"])


async def test_server_timing_can_be_off() -> None:
    app = RequestContextMiddleware(local, on_complete=lambda r: None)
    async with client(app) as c:
        r = await c.get("/nope")
    assert "server-timing" not in r.headers


def test_proxy_part_excludes_the_upstream_wait() -> None:
    record = ExchangeRecord(request_id="r", method="POST", path="/", started=10.0)
    record.upstream_s, record.backend = 0.030, Backend.LEGACY
    assert (
        server_timing(record, now=10.040) == b'proxy;dur=10.000, upstream;dur=30.000;desc="legacy"'
    )


def scope_with(headers: list[tuple[bytes, bytes]], client: tuple[str, int] | None) -> Scope:
    return {"type": "http", "headers": headers, "client": client}


@pytest.mark.parametrize(
    ("config", "show", "headers", "expected"),
    [
        pytest.param(
            ClientKeyConfig(header="x-client-app"),
            False,
            [(b"x-client-app", b"billing")],
            hash_client_key("billing"),
            id="header-hashed",
        ),
        pytest.param(
            ClientKeyConfig(header="x-client-app"),
            True,
            [(b"x-client-app", b" billing ")],
            "billing",
            id="header-shown",
        ),
        pytest.param(
            ClientKeyConfig(header="x-client-app"),
            True,
            [],
            hash_client_key("10.0.0.9"),
            id="address",
        ),
        pytest.param(
            ClientKeyConfig(authorization=True),
            True,
            [(b"authorization", b"Bearer secret")],
            hash_client_key("Bearer secret"),
            id="authorization-always-hashed",
        ),
        pytest.param(ClientKeyConfig(address=False), False, [], None, id="none"),
    ],
)
def test_client_key_reader(
    config: ClientKeyConfig, show: bool, headers: list[tuple[bytes, bytes]], expected: str | None
) -> None:
    read = client_key_reader(config, show_header=show)
    assert read(scope_with(headers, ("10.0.0.9", 5))) == expected


def test_hash_is_stable_and_short() -> None:
    assert hash_client_key("10.0.0.9") == hash_client_key("10.0.0.9")
    assert len(hash_client_key("x")) == 12
    assert hash_client_key("a") != hash_client_key("b")
