"""`exchange.send` retrying, holding and spilling back, against real simulators on loopback:
what the call returns, what each simulator received and what the facts say."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from proxy import exchange
from proxy.config import ProxyConfig, parse_config
from proxy.credentials import build_credentials
from proxy.errors import UpstreamConnectError, UpstreamTimeout
from proxy.models import Backend, ModelRef
from proxy.upstream.pools import Pools
from tests.servers import LiveServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

BODY = b'{"columns": ["a", "b"], "data": [[1, 2], [3, 4]]}'
SPLIT = "application/json; format=pandas-split"
QUICK = {"base": 0.01, "max": 0.02}


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A port nobody listens on (bound, so no other test takes it): connections refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def make_config(serverless_sim: LiveServer, legacy_sim: LiveServer, /, **model: Any) -> ProxyConfig:
    backends = model.pop("backends", {})
    return parse_config(
        {
            "backends": {
                "serverless": {"url": serverless_sim.url, **backends.get("serverless", {})},
                "legacy": {"url": legacy_sim.url, **backends.get("legacy", {})},
            },
            "models": {"iris": {"route": "serverless", **model}},
        },
        {},
    )


def inbound() -> exchange.Inbound:
    path = "/model/iris/1/invocations"
    return exchange.Inbound(
        ModelRef("iris", "1", "1", "iris"),
        path,
        path,
        "",
        "127.0.0.1",
        [("content-type", SPLIT)],
        BODY,
        "r1",
    )


@asynccontextmanager
async def pools_of(config: ProxyConfig) -> AsyncIterator[Pools]:
    pools = Pools.build(config)
    try:
        yield pools
    finally:
        await pools.aclose()


async def call(config: ProxyConfig, backend: Backend, **kwargs: Any) -> tuple[Any, exchange.Trace]:
    facts = exchange.Trace()
    async with pools_of(config) as pools:
        try:
            reply = await exchange.send(
                inbound(), backend, pools, build_credentials(config), facts, **kwargs
            )
        except UpstreamConnectError as exc:
            return exc, facts
    return reply, facts


def faults(server: LiveServer, **knobs: Any) -> None:
    httpx.put(server.url + "/_sim/faults", json=knobs).raise_for_status()


def received(server: LiveServer) -> int:
    return int(httpx.get(server.url + "/_sim/stats").json()["total"])


def legacy_answer(legacy: LiveServer) -> httpx.Response:
    """The legacy simulator's own answer to the request, its counters then cleared."""
    direct = httpx.post(
        legacy.url + "/model/iris/1/invocations", content=BODY, headers={"content-type": SPLIT}
    )
    httpx.post(legacy.url + "/_sim/reset").raise_for_status()
    return direct


@pytest.mark.usefixtures("reset_simulators")
async def test_serverless_503s_are_retried_and_the_facts_say_so(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    faults(serverless, status=503, status_times=2)
    config = make_config(serverless, legacy, retry={"backoff_s": QUICK})
    reply, facts = await call(config, Backend.SERVERLESS)
    assert reply.status == 200
    assert (facts.retries, facts.retry_stop, facts.held_s, facts.spill) == (
        ("503", "503"),
        None,
        0.0,
        None,
    )
    assert received(serverless) == 3


@pytest.mark.usefixtures("reset_simulators")
async def test_max_attempts_ends_the_retries_with_the_last_answer(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    faults(serverless, status=503, retry_after="0")
    config = make_config(serverless, legacy, retry={"max_attempts": 3, "backoff_s": QUICK})
    reply, facts = await call(config, Backend.SERVERLESS)
    assert reply.status == 503
    assert ("retry-after", "0") in reply.headers
    assert (facts.retries, facts.retry_stop) == (("503", "503"), "max_attempts")
    assert received(serverless) == 3


@pytest.mark.usefixtures("reset_simulators")
async def test_a_shadow_call_is_never_retried(serverless: LiveServer, legacy: LiveServer) -> None:
    faults(serverless, status=429)
    config = make_config(serverless, legacy, retry={"backoff_s": QUICK})
    reply, facts = await call(config, Backend.SERVERLESS, shadow=True)
    assert reply.status == 429
    assert facts.retries == ()
    assert received(serverless) == 1


@pytest.mark.usefixtures("reset_simulators")
async def test_legacy_pass_through_is_not_retried_by_default(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    faults(legacy, status=503, status_times=1)
    direct = legacy_answer(legacy)  # the 503, as legacy says it
    faults(legacy, status=503, status_times=1)
    reply, facts = await call(make_config(serverless, legacy), Backend.LEGACY)
    assert (reply.status, reply.body) == (503, direct.content)
    assert facts.retries == ()
    assert received(legacy) == 1


@pytest.mark.usefixtures("reset_simulators")
async def test_legacy_pass_through_retries_when_configured_and_keeps_the_bytes(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    direct = legacy_answer(legacy)
    faults(legacy, status=503, status_times=1)
    legacy_retry = {"legacy": {"retry": {"on": [503], "backoff_s": QUICK}}}
    reply, facts = await call(
        make_config(serverless, legacy, backends=legacy_retry), Backend.LEGACY
    )
    assert (reply.status, reply.body) == (200, direct.content)
    assert facts.retries == ("503",)
    assert received(legacy) == 2


async def test_a_refused_connection_spills_back_to_legacy(
    serverless: LiveServer, legacy: LiveServer, refusing_url: str
) -> None:
    config = make_config(
        serverless,
        legacy,
        serverless={"url": refusing_url},
        fallback="legacy",
        retry={"max_attempts": 2, "backoff_s": QUICK},
    )
    reply, facts = await call(config, Backend.SERVERLESS, fallback=True)
    assert reply.status == 200
    assert reply.body == b"[3.0, 7.0]"  # the legacy simulator's bare list (§5.1)
    assert (facts.backend, facts.spill, facts.retries) == (Backend.LEGACY, "connect", ("connect",))
    assert facts.retry_stop == "max_attempts"


async def test_without_fallback_a_refused_connection_is_a_503(
    serverless: LiveServer, legacy: LiveServer, refusing_url: str
) -> None:
    config = make_config(
        serverless,
        legacy,
        serverless={"url": refusing_url},
        fallback="legacy",
        retry={"max_attempts": 2, "backoff_s": QUICK},
    )
    # A caller that does not ask for it (a probe, a migrated client) is never spilled.
    error, facts = await call(config, Backend.SERVERLESS)
    assert isinstance(error, UpstreamConnectError)
    assert error.sent is False
    assert (facts.backend, facts.spill) == (Backend.SERVERLESS, None)


async def test_a_spent_cold_start_hold_spills_back_as_cold_start(
    serverless: LiveServer, legacy: LiveServer, refusing_url: str
) -> None:
    config = make_config(
        serverless,
        legacy,
        serverless={"url": refusing_url},
        fallback="legacy",
        cold_start={"hold_s": 0.3},
        retry={"on": [], "backoff_s": QUICK},
    )
    reply, facts = await call(config, Backend.SERVERLESS, fallback=True)
    assert reply.status == 200
    assert (facts.backend, facts.spill) == (Backend.LEGACY, "cold_start")
    assert 0.2 < facts.held_s <= 0.3 + 0.1
    assert len(facts.retries) >= 5
    assert set(facts.retries) == {"connect"}


@pytest.mark.usefixtures("reset_simulators")
async def test_a_retry_ends_at_the_requests_total_deadline(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    """`timeout.total` bounds the request, retries included: the retry started at 0.6 s
    gets what is left of the second, not a second of its own."""
    faults(serverless, status=503, status_times=1, delay_ms=600)
    config = make_config(
        serverless,
        legacy,
        backends={"serverless": {"timeout": {"total": 1.0}}},
        retry={"backoff_s": QUICK},
    )
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await call(config, Backend.SERVERLESS)
    assert time.monotonic() - t0 < 1.4
    assert received(serverless) == 2


@pytest.mark.usefixtures("reset_simulators")
async def test_a_spill_back_gets_what_is_left_of_the_deadline(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    faults(serverless, status=429)
    faults(legacy, delay_ms=2000)
    config = make_config(
        serverless,
        legacy,
        backends={"serverless": {"timeout": {"total": 1.0}}},
        fallback="legacy",
        retry={"max_attempts": 2, "backoff_s": QUICK},
    )
    t0 = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        await call(config, Backend.SERVERLESS, fallback=True)
    assert time.monotonic() - t0 < 1.4
    assert (received(serverless), received(legacy)) == (2, 1)
