"""The rollout controller: the gate window and the tick that steps, holds or rolls back."""

from __future__ import annotations

import pytest

from proxy.admin.views import cutover_view
from proxy.cutover import Cutover
from proxy.cutover.commands import parse_change
from proxy.cutover.fleet import P99_RELATIVE_ERROR
from proxy.models import Backend
from tests.cutover.factory import Clock, Factory, rollout_config

pytestmark = pytest.mark.anyio


def kind_of(cutover: Cutover) -> str | None:
    action = cutover.last_action("iris")
    return None if action is None else action.kind


def feed(cutover: Cutover, ok: int, errors: int) -> None:
    for _ in range(ok):
        cutover.count_call("iris", Backend.SERVERLESS, 200, 0.01)
    for _ in range(errors):
        cutover.count_call("iris", Backend.SERVERLESS, 503, 0.01)


async def test_advances_after_an_interval_of_passing_gates(make: Factory) -> None:
    clock = Clock()
    cutover = await make(rollout_config(), clock)
    feed(cutover, ok=20, errors=0)
    await cutover.tick()
    assert cutover.weight("iris") == 5
    assert kind_of(cutover) == "wait"
    clock.now += 60
    feed(cutover, ok=20, errors=0)
    await cutover.tick()
    assert cutover.weight("iris") == 25
    assert (await cutover.history("iris"))[0].action == "advance"
    # The window starts again at the new weight: no samples, so it holds.
    clock.now += 60
    await cutover.tick()
    assert cutover.weight("iris") == 25
    action = cutover.last_action("iris")
    assert action is not None
    assert action.kind == "hold"
    assert "error_rate: 0 of 10 samples" in action.reason
    assert cutover_view(cutover, "iris")["rollout"]["evaluation"]["action"] == "hold"


async def test_a_failing_gate_rolls_back_at_once(make: Factory) -> None:
    clock = Clock()
    cutover = await make(rollout_config(), clock)
    feed(cutover, ok=8, errors=4)
    await cutover.tick()
    assert cutover.weight("iris") == 0
    assert cutover.rollout_status("iris") == "rolled_back"
    entry = (await cutover.history("iris"))[0]
    assert (entry.action, entry.actor) == ("rollback", "rollout")
    assert "error_rate 0.333 > 0.1" in entry.reason


async def test_few_samples_hold_even_if_all_fail(make: Factory) -> None:
    cutover = await make(rollout_config())
    feed(cutover, ok=0, errors=9)
    await cutover.tick()
    assert cutover.weight("iris") == 5
    assert kind_of(cutover) == "hold"


async def test_client_errors_do_not_count(make: Factory) -> None:
    cutover = await make(rollout_config())
    for _ in range(20):
        cutover.count_call("iris", Backend.SERVERLESS, 400, 0.01)
    await cutover.tick()
    assert cutover.weight("iris") == 5


async def test_reaching_the_last_step_is_done(make: Factory) -> None:
    clock = Clock()
    cutover = await make(rollout_config(), clock)
    await cutover.set_weights("iris", parse_change({"serverless_percent": 100}), "ops")
    await cutover.tick()
    assert cutover.rollout_status("iris") == "done"


async def test_two_processes_advance_once(make: Factory) -> None:
    clock = Clock()
    a, b = await make(rollout_config(), clock), await make(rollout_config(), clock)
    clock.now += 60
    feed(a, ok=20, errors=0)
    feed(b, ok=20, errors=0)
    # Both judge the gates; only the leader (the first started) takes the step.
    assert a.leadership.leads()
    assert not b.leadership.leads()
    await b.tick()
    assert b.last_action("iris").kind == "advance"  # type: ignore[union-attr]
    assert b.weight("iris") == 5
    await a.tick()
    await b.refresh()
    assert a.weight("iris") == b.weight("iris") == 25
    actions = [e.action for e in await a.history("iris")]
    assert actions.count("advance") == 1


async def test_any_replica_rolls_back_without_the_leader(make: Factory) -> None:
    clock = Clock()
    a, b = await make(rollout_config(), clock), await make(rollout_config(), clock)
    assert not b.leadership.leads()
    feed(b, ok=5, errors=10)
    await b.tick()
    await a.refresh()
    assert a.weight("iris") == b.weight("iris") == 0
    assert b.rollout_status("iris") == "rolled_back"


async def test_retried_attempts_count_as_errors_but_not_as_latency(make: Factory) -> None:
    cutover = await make(rollout_config())
    # Two slow requests that each failed four attempts before succeeding: eight failures
    # the error gate sees, and two latencies the latency gate reads.
    for _ in range(2):
        for _ in range(4):
            cutover.count_call("iris", Backend.SERVERLESS, 503, None)
        cutover.count_call("iris", Backend.SERVERLESS, 200, 2.0)
    window = cutover.window("iris")
    assert (window.serverless_calls, window.serverless_errors) == (10, 8)
    # An HDR estimate of the fleet's p99 now, to within 0.1%.
    assert window.serverless_p99_s == pytest.approx(2.0, rel=P99_RELATIVE_ERROR)
    await cutover.tick()
    assert cutover.rollout_status("iris") == "rolled_back"
