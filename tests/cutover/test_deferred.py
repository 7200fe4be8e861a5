"""The rule a rollback or pause applied while the store was out is stored by (pure)."""

from __future__ import annotations

from dataclasses import replace

from proxy.config.cutover import RolloutConfig
from proxy.cutover.deferred import Deferred, on_top, overlay
from proxy.cutover.rollout import RolloutState, RolloutStatus
from proxy.cutover.state import ModelState

POLICY = RolloutConfig.model_validate(
    {"steps": [5, 25, 50, 100], "interval": "60s", "on_failure": "last_good"}
)


def running(percent: float, at: float = 10.0) -> ModelState:
    return ModelState(percent, 0.0, RolloutState(RolloutStatus.RUNNING, at), "rollout", at)


def rollback(base: ModelState, percent: float) -> Deferred:
    return Deferred("rollback", "ops", "bad answers", 20.0, base, percent)


def test_a_rollback_on_the_state_it_was_asked_on_writes_what_it_set_here() -> None:
    base = running(50)
    new = on_top(rollback(base, 25), base, POLICY)
    assert new is not None
    assert new.serverless_percent == 25
    assert new.rollout == RolloutState(RolloutStatus.ROLLED_BACK, 20.0, "bad answers")
    assert (new.source, new.changed_at) == ("admin", 20.0)


def test_a_rollback_wins_over_a_step_up_made_elsewhere_meanwhile() -> None:
    # Rolled back 50 -> 25 here; meanwhile another replica stepped 50 -> 100.
    new = on_top(rollback(running(50), 25), running(100, at=15.0), POLICY)
    assert new is not None
    assert new.serverless_percent == 25
    assert new.rollout is not None
    assert new.rollout.status is RolloutStatus.ROLLED_BACK


def test_a_rollback_keeps_a_lower_weight_chosen_meanwhile() -> None:
    new = on_top(rollback(running(50), 25), running(5, at=15.0), POLICY)
    assert new is not None
    assert new.serverless_percent == 5
    assert new.rollout is not None
    assert new.rollout.status is RolloutStatus.ROLLED_BACK


def test_a_rollback_already_in_the_store_is_not_written_twice() -> None:
    base = running(50)
    change = rollback(base, 25)
    stored = on_top(change, base, POLICY)
    assert stored is not None
    assert on_top(change, stored, POLICY) is None


def test_a_pause_keeps_the_weight_and_yields_to_a_rollback_stored_meanwhile() -> None:
    base = running(25)
    pause = Deferred("pause", "ops", "look first", 20.0, base)
    new = on_top(pause, running(50, at=15.0), POLICY)
    assert new is not None
    assert new.serverless_percent == 50
    assert new.rollout == RolloutState(RolloutStatus.PAUSED, 20.0, "look first")
    elsewhere = replace(
        running(0, at=15.0), rollout=RolloutState(RolloutStatus.ROLLED_BACK, 15.0, "gate")
    )
    assert on_top(pause, elsewhere, POLICY) is None


def test_what_is_served_is_every_pending_change_in_order() -> None:
    base = running(50)
    pause = Deferred("pause", "ops", "look first", 20.0, base)
    back = Deferred("rollback", "ops", "now", 21.0, base, 0.0)
    served = overlay(base, (pause, back), POLICY)
    assert served.serverless_percent == 0
    assert served.rollout is not None
    assert served.rollout.status is RolloutStatus.ROLLED_BACK
    assert overlay(base, (), POLICY) is base
