"""Rollout gates and moves as tables over window summaries."""

from __future__ import annotations

import pytest

from proxy.config.cutover import ErrorRateGate, Gates, LatencyGate, ParityGate, RolloutConfig
from proxy.cutover.rollout import (
    GateOutcome,
    RolloutState,
    RolloutStatus,
    WindowStats,
    check_gates,
    evaluate,
    last_good_step,
    next_step,
    should_roll_back,
)

GATES = Gates(
    error_rate=ErrorRateGate(max=0.05, min_samples=10),
    p99_ratio=LatencyGate(max=2.0, min_samples=10, floor_ms=5),
    parity=ParityGate(min=0.9, min_samples=10),
)
STEPS = (1.0, 5.0, 25.0, 50.0, 100.0)
POLICY = RolloutConfig(steps=STEPS, interval=60, gates=GATES)
GOOD = WindowStats(
    serverless_calls=100,
    serverless_errors=1,
    serverless_p99_s=0.050,
    legacy_calls=100,
    legacy_p99_s=0.040,
    parity_samples=100,
    parity_matches=99,
)
RUNNING = RolloutState(RolloutStatus.RUNNING, since=1000.0)


def outcomes(window: WindowStats, gates: Gates = GATES) -> dict[str, GateOutcome]:
    return {r.gate: r.outcome for r in check_gates(window, gates)}


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        pytest.param(GOOD, {"error_rate": "pass", "p99_ratio": "pass", "parity": "pass"}, id="ok"),
        pytest.param(
            WindowStats(),
            {"error_rate": "hold", "p99_ratio": "hold", "parity": "hold"},
            id="empty-window-holds",
        ),
        pytest.param(
            WindowStats(serverless_calls=9, serverless_errors=9),
            {"error_rate": "hold", "p99_ratio": "hold", "parity": "hold"},
            id="nine-failures-still-hold",
        ),
        pytest.param(
            WindowStats(
                serverless_calls=10,
                serverless_errors=1,
                parity_samples=10,
                parity_matches=8,
            ),
            {"error_rate": "fail", "p99_ratio": "hold", "parity": "fail"},
            id="error-rate-and-parity-fail",
        ),
        pytest.param(
            WindowStats(
                serverless_calls=50,
                serverless_p99_s=0.500,
                legacy_calls=50,
                legacy_p99_s=0.100,
            ),
            {"error_rate": "pass", "p99_ratio": "fail", "parity": "hold"},
            id="slow-serverless",
        ),
        pytest.param(
            WindowStats(
                serverless_calls=50,
                serverless_p99_s=0.004,
                legacy_calls=50,
                legacy_p99_s=0.001,
            ),
            {"error_rate": "pass", "p99_ratio": "pass", "parity": "hold"},
            id="under-the-latency-floor",
        ),
        pytest.param(
            WindowStats(
                serverless_calls=50,
                serverless_p99_s=0.100,
                legacy_calls=5,
                legacy_p99_s=0.001,
            ),
            {"error_rate": "pass", "p99_ratio": "hold", "parity": "hold"},
            id="too-few-legacy-samples",
        ),
        pytest.param(
            WindowStats(
                serverless_calls=50,
                serverless_p99_s=0.100,
                legacy_calls=50,
                legacy_p99_s=0.0,
            ),
            {"error_rate": "pass", "p99_ratio": "fail", "parity": "hold"},
            id="zero-legacy-p99",
        ),
    ],
)
def test_gates(window: WindowStats, expected: dict[str, str]) -> None:
    assert outcomes(window) == expected


def test_unconfigured_gates_are_not_judged() -> None:
    assert outcomes(GOOD, Gates(error_rate=None)) == {}


def test_hold_says_why() -> None:
    (result,) = check_gates(WindowStats(serverless_calls=3), Gates())
    assert result.reason == "error_rate: 3 of 20 samples in the window"
    assert not should_roll_back([result])


@pytest.mark.parametrize(
    ("percent", "nxt", "good"),
    [(0, 1, 0), (1, 5, 0), (3, 5, 1), (25, 50, 5), (100, None, 50), (120, None, 100)],
)
def test_steps(percent: float, nxt: float | None, good: float) -> None:
    assert next_step(STEPS, percent) == nxt
    assert last_good_step(STEPS, percent) == good


BAD = WindowStats(serverless_calls=20, serverless_errors=10)


@pytest.mark.parametrize(
    ("policy", "percent", "state", "window", "now", "kind", "to"),
    [
        pytest.param(POLICY, 25, RUNNING, GOOD, 1000 + 59, "wait", None, id="before-interval"),
        pytest.param(POLICY, 25, RUNNING, GOOD, 1000 + 60, "advance", 50, id="advance"),
        pytest.param(POLICY, 0, RUNNING, GOOD, 1000 + 60, "advance", 1, id="from-zero"),
        pytest.param(POLICY, 3, RUNNING, GOOD, 1000 + 60, "advance", 5, id="off-step-weight"),
        pytest.param(POLICY, 100, RUNNING, GOOD, 9999, "done", None, id="done"),
        pytest.param(POLICY, 25, RUNNING, WindowStats(), 9999, "hold", None, id="few-samples-hold"),
        pytest.param(POLICY, 25, RUNNING, BAD, 1000, "rollback", 0, id="rollback-to-zero"),
        pytest.param(
            POLICY.model_copy(update={"on_failure": "last_good"}),
            25,
            RUNNING,
            BAD,
            1000,
            "rollback",
            5,
            id="rollback-to-last-good",
        ),
        pytest.param(
            POLICY,
            25,
            RolloutState(RolloutStatus.PAUSED, 0),
            GOOD,
            9999,
            "wait",
            None,
            id="paused-does-not-step",
        ),
        pytest.param(
            POLICY,
            25,
            RolloutState(RolloutStatus.PAUSED, 0),
            BAD,
            9999,
            "rollback",
            0,
            id="paused-still-guarded",
        ),
        pytest.param(
            POLICY,
            0,
            RolloutState(RolloutStatus.ROLLED_BACK, 0),
            BAD,
            9999,
            "wait",
            None,
            id="nothing-below-zero",
        ),
        pytest.param(
            POLICY,
            5,
            RolloutState(RolloutStatus.ROLLED_BACK, 0),
            GOOD,
            9999,
            "wait",
            None,
            id="rolled-back-stays",
        ),
    ],
)
def test_evaluate(
    policy: RolloutConfig,
    percent: float,
    state: RolloutState,
    window: WindowStats,
    now: float,
    kind: str,
    to: float | None,
) -> None:
    action = evaluate(policy, percent, state, window, now)
    assert (action.kind, action.percent) == (kind, to)


def test_rollback_reason_names_the_gate() -> None:
    action = evaluate(POLICY, 25, RUNNING, BAD, 1000)
    assert action.reason == "gate failed: error_rate 0.500 > 0.05 (10 of 20)"


def test_hold_reason_lists_every_short_gate() -> None:
    action = evaluate(POLICY, 25, RUNNING, WindowStats(serverless_calls=4), 9999)
    assert action.reason.startswith("holding: error_rate: 4 of 10 samples")
    assert "parity: 0 of 10" in action.reason
