"""A model's `max_in_flight` and its queue, end to end on real loopback sockets.

The real `serving-proxy serve` process sits in front of a serverless simulator that takes
1 s per answer and reports the most requests it ever had in flight at once. Ten clients
call one model at the same time: the endpoint never sees more than the model's limit, the
queue serves them in turn, and past the queue's size or timeout a client gets 503 in the
1.x shape, counted by `serving_proxy_queue_wait_seconds`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy import jsoncodec
from tests.integration.proxy_process import ProxyProcess
from tests.servers import LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

CLIENTS = 10
DELAY_MS = 1000
SPLIT = {"content-type": "application/json; format=pandas-split"}
FRAME = {"columns": ["a", "b"], "data": [[1, 2], [3, 4]]}
LEGACY_BODY = jsoncodec.dumps(FRAME)
NEW_BODY = jsoncodec.dumps({"dataframe_split": FRAME})
OVERLOADED = {
    "error_code": "TEMPORARILY_UNAVAILABLE",
    "message": "Too many concurrent requests.",
}
# Each burst is over in a few seconds; this bounds a hung one.
BURST_DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def proxy(
    serverless: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    config = {
        "backends": {"serverless": {"url": serverless.url, "path": "/invocations"}},
        "models": {
            # The default queue (100, 10 s) holds every one of the ten.
            "iris": {"max_in_flight": 2},
            "wine": {"max_in_flight": 2, "queue": {"size": 3, "timeout_s": 0.5}},
        },
    }
    with ProxyProcess(config, tmp_path_factory.mktemp("proxy")) as process:
        yield process


@pytest.fixture
def slow_endpoint(serverless: LiveServer) -> None:
    httpx.post(serverless.url + "/_sim/reset").raise_for_status()
    httpx.put(serverless.url + "/_sim/faults", json={"delay_ms": DELAY_MS}).raise_for_status()


def upstream_stats(serverless: LiveServer) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(serverless.url + "/_sim/stats").json()
    return stats


async def burst(proxy: ProxyProcess, model: str) -> list[httpx.Response]:
    """Ten requests at once, every other one from a migrated client on the new-style URL:
    the model's limit counts both."""
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=proxy.url, limits=limits, timeout=20.0) as client:

        async def one(i: int) -> httpx.Response:
            if i % 2:
                return await client.post(
                    f"/serving-endpoints/{model}/invocations",
                    content=NEW_BODY,
                    headers={"content-type": "application/json"},
                )
            return await client.post(
                f"/model/{model}/1/invocations", content=LEGACY_BODY, headers=SPLIT
            )

        async with asyncio.timeout(BURST_DEADLINE_S):
            return await asyncio.gather(*(one(i) for i in range(CLIENTS)))


def queue_counts(proxy: ProxyProcess, model: str) -> dict[str, float]:
    """`serving_proxy_queue_wait_seconds_count` of the model, by result."""
    text = httpx.get(proxy.url + "/metrics").text
    return {
        sample.labels["result"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "serving_proxy_queue_wait_seconds"
        for sample in family.samples
        if sample.name.endswith("_count") and sample.labels["model"] == model
    }


def settled_queue_counts(proxy: ProxyProcess, model: str, total: int) -> dict[str, float]:
    """The counts once all `total` waits are counted: a request is counted just after its
    answer is sent, so a scrape right after the last answer may be a moment early."""
    deadline = time.monotonic() + 10.0
    while True:
        counts = queue_counts(proxy, model)
        if sum(counts.values()) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


@pytest.mark.usefixtures("slow_endpoint")
async def test_the_endpoint_never_sees_more_than_the_models_limit(
    proxy: ProxyProcess, serverless: LiveServer
) -> None:
    replies = await burst(proxy, "iris")

    assert [r.status_code for r in replies] == [200] * CLIENTS
    stats = upstream_stats(serverless)
    assert stats["total"] == CLIENTS
    assert stats["max_in_flight"] == 2
    # Two got a place at once; the other eight waited for one and say so.
    waited = [r for r in replies if "queue;dur=" in r.headers.get("server-timing", "")]
    assert len(waited) == CLIENTS - 2
    assert settled_queue_counts(proxy, "iris", CLIENTS - 2) == {"waited": CLIENTS - 2}


@pytest.mark.usefixtures("slow_endpoint")
async def test_past_the_queue_clients_get_the_1x_503(
    proxy: ProxyProcess, serverless: LiveServer
) -> None:
    replies = await burst(proxy, "wine")

    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code != 200]
    # Two in flight for 1 s; three queue and time out after 0.5 s; five find it full.
    assert len(ok) == 2
    assert len(refused) == CLIENTS - 2
    for r in refused:
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/json"
        assert r.json() == OVERLOADED
    stats = upstream_stats(serverless)
    assert (stats["total"], stats["max_in_flight"]) == (2, 2)
    assert settled_queue_counts(proxy, "wine", CLIENTS - 2) == {"full": 5, "timeout": 3}
