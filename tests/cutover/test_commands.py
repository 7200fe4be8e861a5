"""Compare-and-set changes on a real (SQLite) store: validate, write, swap, audit."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import parse_config
from proxy.cutover.commands import ChangeError, parse_change
from proxy.cutover.rollout import RolloutStatus
from proxy.cutover.table import UnknownModelError
from tests.cutover.factory import Factory, rollout_config

pytestmark = pytest.mark.anyio


async def test_a_valid_change_swaps_the_table(make: Factory) -> None:
    cutover = await make()
    before = cutover.table
    await cutover.set_weights("iris", parse_change({"serverless_percent": 25}), "ops")
    assert cutover.table["iris"].serverless_percent == 25
    assert before["iris"].serverless_percent == 10  # the old snapshot is never edited
    entry = (await cutover.history("iris"))[0]
    assert (entry.actor, entry.action, entry.reason) == ("ops", "set", "set by ops")
    # Written here, and not a leader's fenced step.
    assert (entry.replica, entry.fencing_token) == (cutover.replica_id, None)
    assert entry.old is not None
    assert (entry.old["serverless_percent"], entry.new["serverless_percent"]) == (10, 25)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        pytest.param({"serverless_percent": 101}, "serverless_percent", id="over-100"),
        pytest.param({"serverless_percent": -1}, "serverless_percent", id="negative"),
        pytest.param({"serverless_percent": "lots"}, "serverless_percent", id="not-a-number"),
        pytest.param({"shadow_percent": 200}, "shadow_percent", id="shadow-over-100"),
        pytest.param({"serverless_pct": 5}, "serverless_pct: unknown field", id="typo"),
        pytest.param({}, "give serverless_percent", id="empty"),
        pytest.param([25], "JSON object", id="not-an-object"),
    ],
)
async def test_an_invalid_change_leaves_the_old_state(
    make: Factory, body: Any, needle: str
) -> None:
    cutover = await make()
    before = cutover.table
    with pytest.raises(ChangeError, match=needle):
        await cutover.set_weights("iris", parse_change(body), "ops")
    assert cutover.table is before
    assert len(await cutover.history("iris")) == 1


async def test_without_legacy_only_100_is_possible(make: Factory) -> None:
    cfg = parse_config(
        {"backends": {"serverless": {"url": "http://127.0.0.1:5002"}}, "models": {"iris": {}}}, {}
    )
    cutover = await make(cfg)
    with pytest.raises(ChangeError, match=r"backends\.legacy"):
        await cutover.set_weights("iris", parse_change({"serverless_percent": 50}), "ops")
    assert cutover.weight("iris") == 100


async def test_unknown_model(make: Factory) -> None:
    cutover = await make()
    with pytest.raises(UnknownModelError):
        await cutover.set_weights("wine", parse_change({"serverless_percent": 5}), "ops")


# --- rollout: manual moves ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("move", "percent", "status"),
    [
        pytest.param("promote", 25, RolloutStatus.RUNNING, id="promote"),
        pytest.param("pause", 5, RolloutStatus.PAUSED, id="pause"),
        pytest.param("resume", 5, RolloutStatus.RUNNING, id="resume"),
        pytest.param("rollback", 0, RolloutStatus.ROLLED_BACK, id="rollback"),
    ],
)
async def test_manual_moves(make: Factory, move: str, percent: float, status: str) -> None:
    cutover = await make(rollout_config())
    state = await getattr(cutover, move)("iris", "ops", "because")
    assert (state.serverless_percent, state.rollout.status) == (percent, status)
    entry = (await cutover.history("iris"))[0]
    assert (entry.action, entry.actor, entry.reason) == (move, "ops", "because")


async def test_rollback_to_the_last_good_step(make: Factory) -> None:
    cutover = await make(rollout_config(on_failure="last_good"))
    await cutover.set_weights("iris", parse_change({"serverless_percent": 50}), "ops")
    state = await cutover.rollback("iris", "ops")
    assert state.serverless_percent == 25
    state = await cutover.rollback("iris", "ops", to="zero")
    assert state.serverless_percent == 0


async def test_promote_past_the_last_step_is_refused(make: Factory) -> None:
    cutover = await make(rollout_config())
    await cutover.set_weights("iris", parse_change({"serverless_percent": 100}), "ops")
    with pytest.raises(ChangeError, match="last step"):
        await cutover.promote("iris", "ops")


async def test_rollout_moves_need_a_rollout(make: Factory) -> None:
    cutover = await make()
    for move in (cutover.promote, cutover.pause, cutover.resume):
        with pytest.raises(ChangeError, match="no rollout"):
            await move("iris", "ops")
    assert (await cutover.rollback("iris", "ops")).serverless_percent == 0
