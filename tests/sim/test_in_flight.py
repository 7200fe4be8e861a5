"""The simulator's `max_in_flight` statistic: the most requests it handled at once, so a
test can check a concurrency limit in front of it."""

from __future__ import annotations

import asyncio

import pytest

from sim.app import create_simulator_app
from sim.faults import Faults
from tests.sim.support import Connect

pytestmark = pytest.mark.anyio

DEADLINE_S = 10.0


async def test_the_most_requests_in_flight_at_once_is_counted_until_reset(
    connect: Connect,
) -> None:
    client = await connect(create_simulator_app("serverless", faults=Faults(delay_ms=200)))
    async with asyncio.timeout(DEADLINE_S):
        await asyncio.gather(
            *(client.post("/invocations", json={"inputs": [[1]]}) for _ in range(3))
        )
        await client.post("/invocations", json={"inputs": [[1]]})
        stats = (await client.get("/_sim/stats")).json()
        assert (stats["total"], stats["max_in_flight"]) == (4, 3)
        assert (await client.post("/_sim/reset")).status_code == 204
        await client.get("/_sim/nothing")  # a control path is not a request in flight
        assert (await client.get("/_sim/stats")).json()["max_in_flight"] == 0
        await client.post("/invocations", json={"inputs": [[1]]})
        assert (await client.get("/_sim/stats")).json()["max_in_flight"] == 1
