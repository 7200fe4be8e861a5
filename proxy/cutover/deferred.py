"""A rollback or pause that took effect here before the store had it. Pure.

A rollback must work when it is needed most, and that includes while the state store is
out. So a rollback (or a pause) is applied to this process's table at once, as a
`Deferred` laid over the state last read from the store, and written to the store as soon
as the store answers; until then `persisted` is false wherever the state is shown.

The rule when it reaches the store: a deferred change is applied again *on top of what
the store holds then*, whatever that is, even if another replica changed the model
meanwhile (its compare-and-set revision is the store's latest, never the one seen before
the outage). A rollback is the safe direction, so it wins:

- a rollback writes the lower of two weights, the one it set here and the one the store
  holds, with the status `rolled_back`: a step up that another replica made meanwhile is
  undone, a lower weight chosen meanwhile is kept (it is safer still);
- a pause sets `paused`, except over a rollback that someone else stored after the pause
  was asked for: `rolled_back` stops the steps as well, and its reason stays visible;
- a change already in the store (the write landed but its answer was lost) is not
  written twice: applying one again to its own result changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from proxy.config.cutover import RolloutConfig
from proxy.cutover.rollout import RolloutState, RolloutStatus, rollback_target
from proxy.cutover.state import ModelState, Source

DeferredAction = Literal["rollback", "pause"]
RollbackTo = Literal["zero", "last_good"]


@dataclass(frozen=True, slots=True)
class Deferred:
    """One rollback or pause as it was asked for: what, by whom, why, when and from where.

    `percent` is the serverless weight a rollback set here (None for a pause); `base` is the
    state the change was asked on.
    """

    action: DeferredAction
    actor: str
    reason: str
    at: float
    base: ModelState
    percent: float | None = None
    # Who moved the weight, as the view shows it: `admin`, or `rollout` for a failed gate.
    source: Source = "admin"


def rolled_back(
    state: ModelState,
    policy: RolloutConfig | None,
    to: RollbackTo | None,
    at: float,
    reason: str,
    source: Source = "admin",
) -> ModelState:
    """`state` rolled back: 0%, or the step below with `last_good`; `rolled_back` with a
    rollout."""
    target = 0.0
    if policy is not None:
        how = to or policy.on_failure
        target = rollback_target(
            policy.model_copy(update={"on_failure": how}), state.serverless_percent
        )
    rollout = None if policy is None else RolloutState(RolloutStatus.ROLLED_BACK, at, reason)
    return ModelState(target, state.shadow_percent, rollout, source, at)


def paused(state: ModelState, at: float, reason: str) -> ModelState:
    """`state` with its rollout paused; the weight stays."""
    return replace(state, rollout=RolloutState(RolloutStatus.PAUSED, at, reason), changed_at=at)


def on_top(
    deferred: Deferred, stored: ModelState, policy: RolloutConfig | None
) -> ModelState | None:
    """The state `deferred` makes of `stored` by the rule above; None when there is
    nothing left to write."""
    if deferred.action == "rollback":
        percent = stored.serverless_percent
        if deferred.percent is not None:
            percent = min(percent, deferred.percent)
        rollout = (
            None
            if policy is None
            else RolloutState(RolloutStatus.ROLLED_BACK, deferred.at, deferred.reason)
        )
        new = ModelState(percent, stored.shadow_percent, rollout, deferred.source, deferred.at)
    else:
        rollout = stored.rollout
        if (
            rollout is not None
            and rollout.status is RolloutStatus.ROLLED_BACK
            and stored != deferred.base
        ):
            return None
        new = paused(stored, deferred.at, deferred.reason)
    return None if new == stored else new


def overlay(
    stored: ModelState, pending: tuple[Deferred, ...], policy: RolloutConfig | None
) -> ModelState:
    """What this process serves: the stored state with every pending change on top, in
    the order they were asked for."""
    state = stored
    for deferred in pending:
        state = on_top(deferred, state, policy) or state
    return state
