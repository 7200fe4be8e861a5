"""`/metrics` by `metrics:`: behind a bearer token, on a listener of its own, or both, on
real loopback sockets; with several workers every one of them serves the listener."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest

from proxy.app import create_app
from proxy.config import parse_config
from proxy.config.backends import Listen
from proxy.telemetry.listener import MetricsListener
from tests.integration.proxy_process import free_port
from tests.secretwatch import secret
from tests.servers import LiveServer

TOKEN = secret("m" * 40)
ENV = {"METRICS_TOKEN": TOKEN}
EXPOSITION = "serving_proxy_"


def config(**metrics: Any) -> Any:
    doc: dict[str, Any] = {
        "backends": {"serverless": {"url": "http://127.0.0.1:1"}},
        "models": {"iris": {}},
        "metrics": metrics,
    }
    if "workers" in metrics:
        doc["server"] = {"workers": metrics.pop("workers")}
    return parse_config(doc, ENV)


def served(cfg: Any) -> LiveServer:
    return LiveServer(create_app(cfg), proxy_headers=False)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_without_metrics_keys_metrics_stay_open_on_the_main_port() -> None:
    with served(config()) as proxy:
        r = httpx.get(proxy.url + "/metrics")
    assert r.status_code == 200
    assert EXPOSITION in r.text


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param(bearer("m" * 39 + "x"), id="wrong"),
        pytest.param({"authorization": f"Basic {TOKEN}"}, id="not-bearer"),
    ],
)
def test_a_token_guards_metrics(headers: dict[str, str]) -> None:
    with served(config(token_env="METRICS_TOKEN")) as proxy:
        r = httpx.get(proxy.url + "/metrics", headers=headers)
        ok = httpx.get(proxy.url + "/metrics", headers=bearer(TOKEN))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="serving-proxy metrics"'
    assert TOKEN not in r.text
    assert ok.status_code == 200
    assert EXPOSITION in ok.text


def test_an_own_listener_serves_metrics_and_the_main_port_no_longer_does() -> None:
    port = free_port()
    with served(config(listen={"host": "127.0.0.1", "port": port})) as proxy:
        main = httpx.get(proxy.url + "/metrics")
        own = httpx.get(f"http://127.0.0.1:{port}/metrics")
        other = httpx.get(f"http://127.0.0.1:{port}/healthz")
        scoring = httpx.post(
            f"http://127.0.0.1:{port}/model/iris/1/invocations",
            content=b"[]",
            headers={"content-type": "application/json"},
        )
    assert main.status_code == 404
    assert main.headers["content-type"] == "text/html; charset=utf-8"  # as any unknown path
    assert own.status_code == 200
    assert EXPOSITION in own.text
    assert (other.status_code, scoring.status_code) == (404, 404)
    assert refused(port)  # stopped with the app's lifespan


def test_an_own_listener_with_a_token_wants_the_token() -> None:
    port = free_port()
    cfg = config(token_env="METRICS_TOKEN", listen={"host": "127.0.0.1", "port": port})
    with served(cfg):
        url = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers=bearer(TOKEN)).status_code == 200


def test_with_several_workers_each_binds_the_listener() -> None:
    """Two workers' lifespans in one test: SO_REUSEPORT lets both listen on the port, and
    either can go away while the other keeps answering."""
    port = free_port()
    cfg = config(listen={"host": "127.0.0.1", "port": port}, workers=2)
    url = f"http://127.0.0.1:{port}/metrics"
    with served(cfg):
        with served(cfg):
            for _ in range(6):  # fresh connections, spread over both by the kernel
                assert httpx.get(url, headers={"connection": "close"}).status_code == 200
        assert httpx.get(url).status_code == 200
    assert refused(port)


@pytest.mark.anyio
async def test_a_single_worker_does_not_share_the_listener() -> None:
    """Without workers to share it, a port someone else holds is a start-up error."""
    listen = Listen(host="127.0.0.1", port=free_port())
    first = MetricsListener(create_app(config()), listen)
    await first.start()
    try:
        with pytest.raises(OSError, match="in use"):
            await MetricsListener(create_app(config()), listen).start()
    finally:
        await first.aclose()
    assert refused(listen.port)
