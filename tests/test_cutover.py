"""The cutover state machine on a real (SQLite) store: validate, write, swap (issue 3 §3, §6)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.config import ProxyConfig, parse_config
from proxy.cutover import ChangeError, Cutover, UnknownModelError, parse_change
from proxy.models import Backend, ModelRef
from proxy.rollout import RolloutStatus
from proxy.state import SqliteStore

pytestmark = pytest.mark.anyio

ROLLOUT = {
    "steps": [1, 5, 25, 50, 100],
    "interval": "60s",
    "gates": {"error_rate": {"max": 0.1, "min_samples": 10}},
}


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(models: dict[str, Any] | None = None, **root: Any) -> ProxyConfig:
    return parse_config(
        {
            "backends": {
                "legacy": {"url": "http://127.0.0.1:5001"},
                "serverless": {"url": "http://127.0.0.1:5002"},
            },
            "models": models or {"iris": {"serverless_percent": 10}},
            **root,
        },
        {},
    )


Factory = Callable[..., Awaitable[Cutover]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[Cutover] = []

    async def build(cfg: ProxyConfig | None = None, clock: Clock | None = None) -> Cutover:
        cutover = Cutover(
            cfg or config(),
            SqliteStore(str(tmp_path / "state.sqlite3")),
            clock=clock or Clock(),
            rng=random.Random(0),
            poll_s=3600,  # tests drive refresh() and tick() themselves
        )
        await cutover.start()
        made.append(cutover)
        return cutover

    yield build
    for cutover in made:
        await cutover.aclose()


async def test_seeds_from_the_config(make: Factory) -> None:
    cutover = await make()
    assert cutover.weight("iris") == 10
    assert cutover.table["iris"].serverless_percent == 10
    (entry,) = await cutover.history("iris")
    assert (entry.actor, entry.action, entry.old) == ("config", "seed", None)


@pytest.mark.parametrize(
    ("route", "percent"),
    [({"route": "legacy"}, 0), ({"route": "serverless"}, 100), ({}, 100)],
)
async def test_route_is_shorthand_for_0_or_100(
    make: Factory, route: dict[str, str], percent: float
) -> None:
    cutover = await make(config({"iris": route}))
    assert cutover.weight("iris") == percent


async def test_a_valid_change_swaps_the_table(make: Factory) -> None:
    cutover = await make()
    before = cutover.table
    await cutover.set_weights("iris", parse_change({"serverless_percent": 25}), "ops")
    assert cutover.table["iris"].serverless_percent == 25
    assert before["iris"].serverless_percent == 10  # the old snapshot is never edited
    entry = (await cutover.history("iris"))[0]
    assert (entry.actor, entry.action, entry.reason) == ("ops", "set", "set by ops")
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


# --- routing through the live table ---------------------------------------------------------

IRIS = ModelRef("iris", "1", "1", "iris")


async def test_decide_uses_the_configured_client_key(make: Factory) -> None:
    cfg = config(
        {"iris": {"serverless_percent": 50}},
        client_key={"header": "X-Client-Id", "address": False},
        route_override={"clients": ["qa-bot"]},
    )
    cutover = await make(cfg)
    sticky = {cutover.decide(IRIS, [("x-client-id", "c-17")], None).primary for _ in range(50)}
    assert len(sticky) == 1
    decision = cutover.decide(
        IRIS, [("x-client-id", "qa-bot"), ("x-serving-proxy-route", "legacy")], None
    )
    assert (decision.primary, decision.reason) == (Backend.LEGACY, "override")
    decision = cutover.decide(
        IRIS, [("x-client-id", "c-17"), ("x-serving-proxy-route", "legacy")], None
    )
    assert decision.reason == "weight"


# --- rollout: manual moves ------------------------------------------------------------------


def rollout_config(**extra: Any) -> ProxyConfig:
    return config({"iris": {"serverless_percent": 5, "rollout": {**ROLLOUT, **extra}}})


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


# --- rollout: the controller ----------------------------------------------------------------


def kind_of(cutover: Cutover) -> str | None:
    action = cutover.last_action("iris")
    return None if action is None else action.kind


def feed(cutover: Cutover, ok: int, errors: int) -> None:
    for _ in range(ok):
        cutover.observe("iris", Backend.SERVERLESS, 200, 0.01)
    for _ in range(errors):
        cutover.observe("iris", Backend.SERVERLESS, 503, 0.01)


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
    assert cutover.view("iris")["rollout"]["evaluation"]["action"] == "hold"


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
        cutover.observe("iris", Backend.SERVERLESS, 400, 0.01)
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
    await a.tick()
    await b.tick()  # b still believes 5%: its compare-and-set loses, and it re-reads
    assert a.weight("iris") == b.weight("iris") == 25
    actions = [e.action for e in await a.history("iris")]
    assert actions.count("advance") == 1
