"""Rate limits, cold starts and spill-back, end to end on real loopback sockets.

The real `serving-proxy serve` process sits in front of a serverless simulator whose fault
knobs answer 429 or 503 (with `Retry-After`) for a number or a share of requests, drop a
request after reading it, or, for a model of its own, refuse connections until the test
starts it; and of a legacy simulator, for spill-back. Each test reads what the client got,
what each simulator received, and what `/metrics` counted.
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
from sim.app import create_simulator_app
from tests.integration.proxy_process import ProxyProcess
from tests.servers import LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

SPLIT = {"content-type": "application/json; format=pandas-split"}
FRAME = {"columns": ["a", "b"], "data": [[1, 2], [3, 4]]}
LEGACY_BODY = jsoncodec.dumps(FRAME)
NEW_BODY = jsoncodec.dumps({"dataframe_split": FRAME})
RATE_LIMITED = {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "simulated fault: status 429"}
UNAVAILABLE = {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "Model endpoint is unavailable."}
# Bounds any one test's requests: each is over in a few seconds.
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def cold() -> Iterator[LiveServer]:
    """A serverless simulator whose port is reserved (bound, not listening: connections are
    refused) until a test starts it, as an endpoint scaled to zero."""
    server = LiveServer(create_simulator_app("serverless"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxy(
    serverless: LiveServer,
    legacy: LiveServer,
    cold: LiveServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    quick = {"base": 0.05, "max": 0.2}
    config = {
        "backends": {"serverless": {"url": serverless.url}, "legacy": {"url": legacy.url}},
        # The tests of this module share one process: the proxy-wide budget is not theirs
        # to test (test_the_retry_budget_caps_the_extra_load has a proxy of its own).
        "retry_budget": {"min_per_s": 100},
        "models": {
            # The serverless backend's default retries.
            "iris": {"route": "serverless"},
            "short": {"route": "serverless", "retry": {"budget_s": 3, "max_attempts": 100}},
            "spill": {
                "route": "serverless",
                "fallback": "legacy",
                "retry": {"max_attempts": 2, "backoff_s": quick},
            },
            "cold": {
                "route": "serverless",
                "serverless": {"url": cold.url},
                "cold_start": {"hold_s": 20},
                "retry": {"backoff_s": {"base": 0.1, "max": 1}},
            },
        },
    }
    with ProxyProcess(config, tmp_path_factory.mktemp("proxy")) as process:
        yield process


def set_faults(server: LiveServer, **faults: Any) -> None:
    httpx.post(server.url + "/_sim/reset").raise_for_status()
    httpx.put(server.url + "/_sim/faults", json=faults).raise_for_status()


@pytest.fixture(autouse=True)
def healthy(serverless: LiveServer, legacy: LiveServer) -> Iterator[None]:
    set_faults(serverless)
    set_faults(legacy)
    yield
    set_faults(serverless)


def received(server: LiveServer) -> int:
    return int(httpx.get(server.url + "/_sim/stats").json()["total"])


def metric(proxy: ProxyProcess, sample_name: str, **labels: str) -> float:
    """The sum of the samples named `sample_name` whose labels include `labels`."""
    text = httpx.get(proxy.url + "/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name and labels.items() <= sample.labels.items()
    )


def settled(proxy: ProxyProcess, sample_name: str, at_least: float, **labels: str) -> float:
    """The metric once it reaches `at_least`, or as it is after 10 s: a request is counted
    just after its answer is sent, so a scrape right after the answer may be a moment early."""
    deadline = time.monotonic() + 10.0
    while True:
        value = metric(proxy, sample_name, **labels)
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def legacy_post(proxy: ProxyProcess, model: str) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/model/{model}/1/invocations",
        content=LEGACY_BODY,
        headers=SPLIT,
        timeout=DEADLINE_S,
    )


def test_a_429_with_retry_after_is_retried_when_the_endpoint_says(
    proxy: ProxyProcess, serverless: LiveServer
) -> None:
    retries = "serving_proxy_upstream_retries_total"
    labels = {"model": "iris", "backend": "serverless", "reason": "429"}
    before = metric(proxy, retries, **labels)
    set_faults(serverless, status=429, retry_after="1", status_times=2)

    t0 = time.monotonic()
    r = legacy_post(proxy, "iris")
    elapsed = time.monotonic() - t0

    assert r.status_code == 200
    assert r.json() == [3.0, 7.0]
    assert elapsed >= 2.0  # Retry-After: 1, twice
    assert received(serverless) == 3
    assert 'retry;desc="2"' in r.headers["server-timing"]
    assert settled(proxy, retries, before + 2, **labels) == before + 2


def test_retries_end_at_budget_s_with_the_1x_shaped_429(
    proxy: ProxyProcess, serverless: LiveServer
) -> None:
    stops = "serving_proxy_retry_stops_total"
    before = metric(proxy, stops, model="short", reason="budget_s")
    set_faults(serverless, status=429)

    t0 = time.monotonic()
    r = legacy_post(proxy, "short")
    elapsed = time.monotonic() - t0

    assert r.status_code == 429
    assert r.json() == RATE_LIMITED
    # Backoff from 0.2 s doubling: the last retry starts as the 3 s run out.
    assert 2.9 <= elapsed < 3.5
    assert received(serverless) >= 3
    assert settled(proxy, stops, before + 1, model="short", reason="budget_s") == before + 1


def test_a_retry_after_beyond_the_budget_answers_at_once(
    proxy: ProxyProcess, serverless: LiveServer
) -> None:
    set_faults(serverless, status=503, retry_after="60")
    before = metric(proxy, "serving_proxy_retry_stops_total", reason="retry_after")

    t0 = time.monotonic()
    r = legacy_post(proxy, "short")

    assert time.monotonic() - t0 < 1.0
    assert r.status_code == 503
    assert r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert r.headers["retry-after"] == "60"  # forwarded (§6.4 M11)
    assert received(serverless) == 1
    stops = settled(proxy, "serving_proxy_retry_stops_total", before + 1, reason="retry_after")
    assert stops == before + 1


async def test_a_cold_endpoint_is_held_until_it_serves(
    proxy: ProxyProcess, cold: LiveServer
) -> None:
    """The endpoint refuses connections for the first 5 s; every request sent meanwhile is
    held and answered 200."""
    holds = "serving_proxy_cold_start_hold_seconds_count"
    before = metric(proxy, holds, model="cold")

    async def one(client: httpx.AsyncClient, after_s: float) -> httpx.Response:
        await asyncio.sleep(after_s)
        return await client.post("/model/cold/1/invocations", content=LEGACY_BODY, headers=SPLIT)

    async def scale_from_zero() -> None:
        await asyncio.sleep(5.0)
        await asyncio.to_thread(cold.start)

    async with httpx.AsyncClient(base_url=proxy.url, timeout=DEADLINE_S) as client:
        async with asyncio.timeout(DEADLINE_S):
            *replies, _ = await asyncio.gather(
                *(one(client, 0.5 * i) for i in range(10)), scale_from_zero()
            )

    assert [r.status_code for r in replies] == [200] * 10
    assert all(r.json() == [3.0, 7.0] for r in replies)
    for r in replies:
        assert "hold;dur=" in r.headers["server-timing"]
    assert settled(proxy, holds, before + 10, model="cold") == before + 10
    assert metric(proxy, "serving_proxy_upstream_retries_total", model="cold", reason="connect")


def test_fallback_answers_a_rate_limited_legacy_client_from_legacy(
    proxy: ProxyProcess, serverless: LiveServer, legacy: LiveServer
) -> None:
    spills = "serving_proxy_spill_backs_total"
    before = metric(proxy, spills, model="spill", reason="429")
    set_faults(serverless, status=429)
    direct = httpx.post(
        legacy.url + "/model/spill/1/invocations", content=LEGACY_BODY, headers=SPLIT
    )
    set_faults(legacy)  # its counters back to zero

    replies = [legacy_post(proxy, "spill") for _ in range(3)]

    for r in replies:
        assert (r.status_code, r.content) == (direct.status_code, direct.content)
        assert r.headers["content-type"] == direct.headers["content-type"]
        assert 'spill;desc="legacy after 429"' in r.headers["server-timing"]
    # Two attempts each on serverless (max_attempts: 2), then one each on legacy.
    assert received(serverless) == 6
    assert received(legacy) == 3
    assert settled(proxy, spills, before + 3, model="spill", reason="429") == before + 3


def test_a_new_style_request_is_never_spilled(
    proxy: ProxyProcess, serverless: LiveServer, legacy: LiveServer
) -> None:
    set_faults(serverless, status=429)

    r = httpx.post(
        proxy.url + "/serving-endpoints/spill/invocations",
        content=NEW_BODY,
        headers={"content-type": "application/json"},
        timeout=DEADLINE_S,
    )

    assert r.status_code == 429
    assert r.json() == RATE_LIMITED  # the endpoint's answer, as it came
    assert received(serverless) == 2
    assert received(legacy) == 0


def test_a_request_the_endpoint_read_and_dropped_is_neither_retried_nor_spilled(
    proxy: ProxyProcess, serverless: LiveServer, legacy: LiveServer
) -> None:
    set_faults(serverless, drop=True)

    r = legacy_post(proxy, "spill")

    assert r.status_code == 503
    assert r.json() == UNAVAILABLE
    assert received(serverless) == 1
    assert received(legacy) == 0


def test_a_500_is_neither_retried_nor_spilled(
    proxy: ProxyProcess, serverless: LiveServer, legacy: LiveServer
) -> None:
    set_faults(serverless, status=500)

    r = legacy_post(proxy, "spill")

    assert r.status_code == 500
    assert r.json()["error_code"] == "INTERNAL_ERROR"
    assert received(serverless) == 1
    assert received(legacy) == 0


# The retry budget: a proxy of its own, so the window holds only this test's requests.
RATE_PER_S = 100
BURST_S = 4.0


@pytest.fixture
def budget_proxy(serverless: LiveServer, tmp_path: Any) -> Iterator[ProxyProcess]:
    config = {
        "backends": {"serverless": {"url": serverless.url}},
        # The defaults: retries at most 20% of requests, at least 5 a second.
        "models": {"busy": {"retry": {"backoff_s": {"base": 0.01, "max": 0.05}}}},
    }
    with ProxyProcess(config, tmp_path) as process:
        yield process


async def test_the_retry_budget_caps_the_extra_load(
    budget_proxy: ProxyProcess, serverless: LiveServer
) -> None:
    """Half the requests answered 429, 100 requests a second: without a budget each would
    be retried until it passed (about two attempts a request); with it, the endpoint sees
    at most 1.2 attempts per client request."""
    set_faults(serverless, status=429, status_rate=0.5)
    limits = httpx.Limits(max_connections=400)
    async with httpx.AsyncClient(
        base_url=budget_proxy.url, limits=limits, timeout=DEADLINE_S
    ) as client:

        async def one() -> httpx.Response:
            return await client.post(
                "/model/busy/1/invocations", content=LEGACY_BODY, headers=SPLIT
            )

        tasks = []
        async with asyncio.timeout(DEADLINE_S):
            start = asyncio.get_running_loop().time()
            for i in range(int(RATE_PER_S * BURST_S)):
                # Paced by the clock, not by the sleeps, so a slow turn does not stretch it.
                await asyncio.sleep(
                    max(0.0, start + i / RATE_PER_S - asyncio.get_running_loop().time())
                )
                tasks.append(asyncio.ensure_future(one()))
            replies = await asyncio.gather(*tasks)

    requests = len(replies)
    assert {r.status_code for r in replies} <= {200, 429}
    attempts = received(serverless)
    assert attempts <= 1.2 * requests
    # Retries did happen, and it was the budget that stopped the rest.
    assert attempts > requests
    refused = settled(
        budget_proxy, "serving_proxy_retry_stops_total", 1, model="busy", reason="retry_budget"
    )
    assert refused > 0
