"""The fault knobs: read and replaced at run time, validated, seeded, and what each does."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from sim.app import create_simulator_app
from sim.dialect import SimulatorKind
from sim.faults import Faults
from tests.servers import LiveServer
from tests.sim.support import (
    Connect,
    live_client,
)

pytestmark = pytest.mark.anyio


async def put_faults(client: httpx.AsyncClient, **faults: Any) -> httpx.Response:
    return await client.put("/_sim/faults", json=faults)


async def test_faults_read_and_replace(connect: Connect) -> None:
    client = await connect(create_simulator_app("serverless", faults=Faults(delay_ms=1)))
    assert (await client.get("/_sim/faults")).json() == {
        "delay_ms": 1.0,
        "jitter_ms": 0.0,
        "status": None,
        "status_times": None,
        "status_rate": 1.0,
        "retry_after": None,
        "fail_rate": 0.0,
        "malformed": False,
        "drop": False,
    }
    response = await put_faults(client, status=503, fail_rate=0.25)
    assert response.status_code == 200
    current = (await client.get("/_sim/faults")).json()
    # PUT replaces the whole set: the delay not named went back to its default
    assert (current["status"], current["fail_rate"], current["delay_ms"]) == (503, 0.25, 0.0)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param({"delay": 5}, "unknown fields: delay", id="unknown-field"),
        pytest.param({"delay_ms": "5"}, "delay_ms must be a number", id="string-number"),
        pytest.param({"drop": 1}, "drop must be true or false", id="int-bool"),
        pytest.param({"status": True}, "status must be an integer", id="bool-status"),
        pytest.param({"status": 42}, "status must be an HTTP status", id="status-range"),
        pytest.param({"fail_rate": 1.5}, "fail_rate must be between 0 and 1", id="rate-range"),
        pytest.param({"jitter_ms": -1}, "jitter_ms must be", id="negative-jitter"),
        pytest.param([1], "must be a JSON object", id="not-an-object"),
    ],
)
async def test_invalid_faults_are_refused_and_change_nothing(
    connect: Connect, body: Any, fragment: str
) -> None:
    client = await connect(create_simulator_app("serverless", faults=Faults(status=418)))
    response = await client.put("/_sim/faults", json=body)
    assert response.status_code == 400
    assert fragment in response.json()["message"]
    assert (await client.get("/_sim/faults")).json()["status"] == 418


async def test_invalid_faults_json_is_refused(connect: Connect) -> None:
    client = await connect(create_simulator_app("serverless"))
    response = await client.put("/_sim/faults", content=b"{nope")
    assert response.status_code == 400


@pytest.mark.parametrize("kind", ["legacy", "serverless"])
@pytest.mark.parametrize(
    ("status", "error_code"),
    [
        (503, "TEMPORARILY_UNAVAILABLE"),
        (429, "REQUEST_LIMIT_EXCEEDED"),
        (502, "INTERNAL_ERROR"),
        (418, "BAD_REQUEST"),
    ],
)
async def test_status_fault_answers_every_request(
    connect: Connect, kind: SimulatorKind, status: int, error_code: str
) -> None:
    client = await connect(create_simulator_app(kind, faults=Faults(status=status)))
    for path in ("/invocations", "/ping"):
        response = await client.post(path, json={"inputs": [[1]]})
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error_code"] == error_code


async def test_fail_rate_one_fails_everything(connect: Connect) -> None:
    client = await connect(create_simulator_app("serverless"))
    await put_faults(client, fail_rate=1.0)
    statuses = {
        (await client.post("/invocations", json={"inputs": [1]})).status_code for _ in range(5)
    }
    assert statuses == {500}


async def fail_pattern(seed: int, count: int = 40) -> list[int]:
    app = create_simulator_app("serverless", faults=Faults(fail_rate=0.5), seed=seed)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        return [
            (await client.post("/invocations", json={"inputs": [1]})).status_code
            for _ in range(count)
        ]


async def test_fail_rate_is_seeded() -> None:
    first, again, other = await fail_pattern(7), await fail_pattern(7), await fail_pattern(8)
    assert first == again
    assert first != other
    assert set(first) == {200, 500}


async def test_jitter_is_seeded_and_bounded() -> None:
    async def delays(seed: int) -> list[float]:
        faults = Faults(delay_ms=1.0, jitter_ms=2.0)
        app = create_simulator_app("serverless", faults=faults, seed=seed)
        transport = httpx.ASGITransport(app)
        drawn = []
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            for _ in range(5):
                await client.post("/invocations", json={"inputs": [1]})
                stats = (await client.get("/_sim/stats")).json()
                drawn.append(stats["last_request"]["delay_ms"])
        return drawn

    first, again, other = await delays(3), await delays(3), await delays(4)
    assert first == again
    assert first != other
    assert all(1.0 <= delay <= 3.0 for delay in first)
    assert len(set(first)) == len(first)


async def test_delay_holds_the_answer_back() -> None:
    app = create_simulator_app("serverless", faults=Faults(delay_ms=1_000))
    with LiveServer(app) as server:
        timeout = httpx.Timeout(5.0, read=0.05)
        async with httpx.AsyncClient(base_url=server.url, timeout=timeout, trust_env=False) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.post("/invocations", json={"inputs": [1]})
            await put_faults(c, delay_ms=0)
            assert (await c.post("/invocations", json={"inputs": [1]})).status_code == 200


async def test_malformed_answers_200_with_a_body_that_is_not_json(connect: Connect) -> None:
    client = await connect(create_simulator_app("serverless", faults=Faults(malformed=True)))
    response = await client.post("/invocations", json={"inputs": [1]})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(ValueError, match="Expecting value"):
        json.loads(response.text)


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_drop_closes_the_connection_without_a_response(http: str) -> None:
    app = create_simulator_app("serverless", faults=Faults(drop=True))
    async with live_client(app, http=http) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await client.post("/invocations", json={"inputs": [1]})
        # the control plane still answers, and the dropped request was counted
        assert (await client.get("/_sim/stats")).json()["total"] == 1
        await put_faults(client, drop=False)
        response = await client.post("/invocations", json={"inputs": [1]})
        assert response.json() == {"predictions": [1.0]}


async def test_faults_do_not_touch_the_control_plane(connect: Connect) -> None:
    client = await connect(create_simulator_app("serverless", faults=Faults(status=500)))
    assert (await client.get("/_sim/faults")).status_code == 200
    assert (await client.get("/_sim/stats")).status_code == 200
