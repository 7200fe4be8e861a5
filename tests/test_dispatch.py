"""The scoring URLs' entrance: which paths it takes, and that it keeps the router's
properties (one error renderer, bugs as legacy 500s, nothing forwarded for a wrong path).

The pure matcher is `protocol.paths.scoring_url` (tested there); this runs the whole app
in-process against a real simulator on loopback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from proxy import errors
from proxy.app import create_app
from proxy.config import parse_config
from proxy.models import UpstreamReply
from proxy.telemetry.record import ExchangeRecord
from proxy.upstream.base import UpstreamSettings
from tests.servers import LiveServer

SPLIT = b'{"columns": ["a", "b"], "data": [[1, 2.5], [3, 4]]}'
SPLIT_CT = "application/json; format=pandas-split"


def make_config(serverless: LiveServer) -> Any:
    return parse_config(
        {
            "backends": {"serverless": {"url": serverless.url, "path": "/invocations"}},
            "models": {"iris": {}},
        },
        {},
    )


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("10.1.2.3", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            yield manager.app, client


def total(server: LiveServer) -> int:
    return int(httpx.get(server.url + "/_sim/stats").json()["total"])


class Buggy:
    """An upstream whose client library fails in a way no error table knows: a bug."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings

    async def send(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> UpstreamReply:
        raise RuntimeError("a bug below the handler")

    async def aclose(self) -> None:
        return None


@pytest.mark.anyio
@pytest.mark.integration
@pytest.mark.usefixtures("reset_simulators")
@pytest.mark.parametrize(
    "path",
    ["/model/iris/1/invocations/", "/model//1/invocations", "/serving-endpoints//invocations"],
)
async def test_near_miss_paths_are_the_werkzeug_404_and_never_forwarded(
    serverless: LiveServer, path: str
) -> None:
    async with running(create_app(make_config(serverless))) as (_, client):
        r = await client.post(path, content=SPLIT, headers={"content-type": SPLIT_CT})
        ok = await client.post(
            "/model/iris/1/invocations", content=SPLIT, headers={"content-type": SPLIT_CT}
        )
    assert (r.status_code, r.headers["content-type"], r.text) == (404, errors.HTML, errors.E15_PAGE)
    assert ok.status_code == 200
    assert total(serverless) == 1


@pytest.mark.anyio
@pytest.mark.integration
@pytest.mark.usefixtures("reset_simulators")
async def test_a_bug_on_the_scoring_path_is_a_legacy_500_and_the_proxy_keeps_serving(
    serverless: LiveServer,
) -> None:
    seen: list[ExchangeRecord] = []
    app = create_app(make_config(serverless), upstream_factory=Buggy, on_complete=seen.append)
    # raise_app_exceptions=False: the client sees what a real server would send.
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            first = await client.post(
                "/model/iris/1/invocations", content=SPLIT, headers={"content-type": SPLIT_CT}
            )
            second = await client.get("/ping")
    assert first.status_code == 500
    assert first.json()["error_code"] == "INTERNAL_ERROR"
    assert "RuntimeError" not in first.text  # no traceback or exception text for the client
    assert second.status_code == 200
    assert [(r.status, r.flag) for r in seen] == [(500, "BUG"), (200, "-")]


@pytest.mark.anyio
@pytest.mark.integration
@pytest.mark.usefixtures("reset_simulators")
async def test_a_client_that_leaves_mid_body_is_a_499_and_nothing_is_forwarded(
    serverless: LiveServer,
) -> None:
    seen: list[ExchangeRecord] = []
    app = create_app(make_config(serverless), on_complete=seen.append)
    sent: list[dict[str, Any]] = []
    messages = [
        {"type": "http.request", "body": SPLIT[:10], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with running(app) as (asgi, _):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/model/iris/1/invocations",
            "raw_path": b"/model/iris/1/invocations",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", SPLIT_CT.encode())],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8080),
        }
        await asgi(scope, receive, send)
    assert sent[0]["status"] == 499
    (record,) = seen
    assert (record.status, record.flag, record.model) == (499, "DC", "iris")
    assert total(serverless) == 0
