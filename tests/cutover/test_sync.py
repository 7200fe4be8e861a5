"""Following the store: a change made by one process reaches the others, and restarts."""

from __future__ import annotations

import pytest

from proxy.cutover.commands import parse_change
from tests.cutover.factory import Factory, config

pytestmark = pytest.mark.anyio


async def test_a_change_reaches_another_process_through_the_store(make: Factory) -> None:
    a, b = await make(), await make()
    await a.set_weights("iris", parse_change({"serverless_percent": 40, "reason": "r"}), "ops")
    assert b.weight("iris") == 10
    assert await b.refresh()
    assert b.weight("iris") == 40
    assert not await b.refresh()  # nothing new: one cheap read


async def test_state_survives_a_restart_and_beats_the_config(make: Factory) -> None:
    first = await make()
    await first.set_weights("iris", parse_change({"serverless_percent": 60}), "ops")
    await first.aclose()
    again = await make(config({"iris": {"serverless_percent": 5}}))
    assert again.weight("iris") == 60


async def test_state_from_the_config_follows_the_config(make: Factory) -> None:
    first = await make()
    await first.aclose()
    again = await make(config({"iris": {"serverless_percent": 30}}))
    assert again.weight("iris") == 30
    entry = (await again.history("iris"))[0]
    assert (entry.action, entry.reason) == ("seed", "the config changed")
