"""Progressive rollout: gates over a window of recent calls, and what to do next. Pure.

No I/O, no clock: the caller passes `now` and a `WindowStats` summary; `evaluate` returns
an `Action` that the controller applies through the state store.

Rules, in order:

1. A gate with fewer samples than its `min_samples` **holds**: it neither passes nor fails
   (flagger#1035: a model with little traffic must not be judged on three requests).
2. Any gate that **fails** rolls the weight back at once, to 0 or to the last good step
   (`on_failure`), in every status: pausing stops the steps, not the guard.
3. While `running`, when the current weight has been in force for `interval` and every
   gate passes, the next step is applied; past the last step the rollout is `done`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from proxy.config.cutover import Gates, RolloutConfig


class RolloutStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    ROLLED_BACK = "rolled_back"
    DONE = "done"


class GateOutcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class RolloutState:
    """Where a model's rollout is. `since`: when the current weight took effect (epoch s)."""

    status: RolloutStatus
    since: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class WindowStats:
    """What one process saw in the sliding window since the current weight took effect.

    Serverless calls include shadow calls to serverless; parity counts exclude shadow
    errors (those are serverless or legacy errors, counted where they belong).
    """

    serverless_calls: int = 0
    serverless_errors: int = 0
    serverless_p99_s: float | None = None
    legacy_calls: int = 0
    legacy_p99_s: float | None = None
    parity_samples: int = 0
    parity_matches: int = 0


@dataclass(frozen=True, slots=True)
class GateResult:
    gate: str
    outcome: GateOutcome
    value: float | None
    limit: float
    samples: int
    min_samples: int
    reason: str


ActionKind = Literal["wait", "hold", "advance", "rollback", "done"]


@dataclass(frozen=True, slots=True)
class Action:
    """What the controller should do. `percent` is the new weight for advance/rollback."""

    kind: ActionKind
    reason: str
    percent: float | None = None
    gates: tuple[GateResult, ...] = ()


def _held(gate: str, limit: float, samples: int, need: int) -> GateResult:
    return GateResult(
        gate,
        GateOutcome.HOLD,
        None,
        limit,
        samples,
        need,
        f"{gate}: {samples} of {need} samples in the window",
    )


def check_gates(window: WindowStats, gates: Gates) -> tuple[GateResult, ...]:
    """Judge every configured gate on the window."""
    results: list[GateResult] = []
    rate = gates.error_rate
    if rate is not None:
        n = window.serverless_calls
        if n < rate.min_samples:
            results.append(_held("error_rate", rate.max, n, rate.min_samples))
        else:
            value = window.serverless_errors / n
            ok = value <= rate.max
            results.append(
                GateResult(
                    "error_rate",
                    GateOutcome.PASS if ok else GateOutcome.FAIL,
                    value,
                    rate.max,
                    n,
                    rate.min_samples,
                    f"error_rate {value:.3f} {'<=' if ok else '>'} {rate.max} "
                    f"({window.serverless_errors} of {n})",
                )
            )
    latency = gates.p99_ratio
    if latency is not None:
        n = min(window.serverless_calls, window.legacy_calls)
        s99, l99 = window.serverless_p99_s, window.legacy_p99_s
        if n < latency.min_samples or s99 is None or l99 is None:
            results.append(_held("p99_ratio", latency.max, n, latency.min_samples))
        else:
            value = s99 / l99 if l99 > 0 else math.inf
            ok = value <= latency.max or s99 * 1000 <= latency.floor_ms
            results.append(
                GateResult(
                    "p99_ratio",
                    GateOutcome.PASS if ok else GateOutcome.FAIL,
                    value if math.isfinite(value) else None,
                    latency.max,
                    n,
                    latency.min_samples,
                    f"p99 serverless {s99 * 1000:.1f} ms / legacy {l99 * 1000:.1f} ms "
                    f"= {value:.2f} {'<=' if ok else '>'} {latency.max}",
                )
            )
    parity = gates.parity
    if parity is not None:
        n = window.parity_samples
        if n < parity.min_samples:
            results.append(_held("parity", parity.min, n, parity.min_samples))
        else:
            value = window.parity_matches / n
            ok = value >= parity.min
            results.append(
                GateResult(
                    "parity",
                    GateOutcome.PASS if ok else GateOutcome.FAIL,
                    value,
                    parity.min,
                    n,
                    parity.min_samples,
                    f"parity {value:.3f} {'>=' if ok else '<'} {parity.min} "
                    f"({window.parity_matches} of {n})",
                )
            )
    return tuple(results)


def should_roll_back(results: Sequence[GateResult]) -> bool:
    """Any failing gate rolls back; holding gates never do."""
    return any(r.outcome is GateOutcome.FAIL for r in results)


def next_step(steps: Sequence[float], percent: float) -> float | None:
    """The first step above the current weight, or None past the last."""
    for step in steps:
        if step > percent:
            return step
    return None


def last_good_step(steps: Sequence[float], percent: float) -> float:
    """The highest step under the current weight: the last one that passed its interval."""
    good = 0.0
    for step in steps:
        if step < percent:
            good = step
    return good


def rollback_target(policy: RolloutConfig, percent: float) -> float:
    return last_good_step(policy.steps, percent) if policy.on_failure == "last_good" else 0.0


def evaluate(
    policy: RolloutConfig,
    percent: float,
    state: RolloutState,
    window: WindowStats,
    now: float,
) -> Action:
    """The next move for one model (see the module docstring for the rules)."""
    results = check_gates(window, policy.gates)
    if should_roll_back(results):
        failed = "; ".join(r.reason for r in results if r.outcome is GateOutcome.FAIL)
        if percent <= 0:
            return Action("wait", f"failing at 0%, nothing to roll back: {failed}", None, results)
        return Action(
            "rollback", f"gate failed: {failed}", rollback_target(policy, percent), results
        )
    if state.status is not RolloutStatus.RUNNING:
        return Action("wait", f"{state.status}", None, results)
    step = next_step(policy.steps, percent)
    if step is None:
        return Action("done", f"reached the last step ({percent:g}%)", None, results)
    held = [r.reason for r in results if r.outcome is GateOutcome.HOLD]
    if held:
        return Action("hold", "holding: " + "; ".join(held), None, results)
    due = state.since + policy.interval
    if now < due:
        return Action("wait", f"gates pass; {step:g}% in {due - now:.0f} s", None, results)
    return Action("advance", f"gates passed for {policy.interval:g} s", step, results)
