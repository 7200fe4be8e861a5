"""The middleware's reporting duties: Server-Timing, and the client key read once per request.

A tiny inner app stands in for the handlers and writes the timings a handler would.
"""

from __future__ import annotations

import re

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from proxy.asgi import record_of
from proxy.config.cutover import ClientKeyConfig
from proxy.middleware import RequestContextMiddleware
from proxy.models import Backend
from proxy.routing import ClientKey, hash_client_key, report_label
from proxy.telemetry.labels import ClientLabels
from proxy.telemetry.record import ExchangeRecord

pytestmark = pytest.mark.anyio
SECRET = b"k" * 32
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


@pytest.mark.parametrize(
    ("config", "show", "headers", "key", "label"),
    [
        pytest.param(
            ClientKeyConfig(header="x-client-app"),
            False,
            [("x-client-app", "billing")],
            ClientKey("header", "billing", "10.0.0.9"),
            hash_client_key("billing", SECRET),
            id="header-hashed",
        ),
        pytest.param(
            ClientKeyConfig(header="x-client-app"),
            True,
            [("x-client-app", " billing ")],
            ClientKey("header", "billing", "10.0.0.9"),
            "billing",
            id="header-shown",
        ),
        pytest.param(
            ClientKeyConfig(header="x-client-app"),
            True,
            [],
            ClientKey("address", "10.0.0.9", "10.0.0.9"),
            hash_client_key("10.0.0.9", SECRET),
            id="address",
        ),
        pytest.param(ClientKeyConfig(address=False), False, [], None, None, id="none"),
    ],
)
async def test_the_client_key_is_read_once_for_routing_and_reports(
    config: ClientKeyConfig,
    show: bool,
    headers: list[tuple[str, str]],
    key: ClientKey | None,
    label: str | None,
) -> None:
    seen: list[object] = []
    records: list[ExchangeRecord] = []

    async def handler(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["state"]["client_key"])  # what the routing decision reads
        await local(scope, receive, send)

    app = RequestContextMiddleware(
        handler,
        on_complete=records.append,
        client_key=config,
        labels=ClientLabels(SECRET, show_header=show),
    )
    transport = httpx.ASGITransport(app=app, client=("10.0.0.9", 5))
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as c:
        await c.get("/model/iris/1/invocations", headers=headers)
    assert seen == [key]
    assert records[0].client_key == label


def test_an_authorization_key_is_always_hashed_in_reports() -> None:
    key = ClientKey("authorization", "0" * 32)  # already a digest: never the token
    assert report_label(key, SECRET, show_header=True) == hash_client_key("0" * 32, SECRET)


def test_hash_is_stable_and_short() -> None:
    assert hash_client_key("10.0.0.9", SECRET) == hash_client_key("10.0.0.9", SECRET)
    assert len(hash_client_key("x", SECRET)) == 12
    assert hash_client_key("a", SECRET) != hash_client_key("b", SECRET)
