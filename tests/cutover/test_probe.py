"""The readiness probe before a step up: the pure result and decision, the probe's
request as the translating path gets it, and the controller holding, retrying and
stepping on the probe's word (the probe itself is the test's: the real one, through
real simulators, is in tests/integration/test_readiness_probe.py)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from proxy.admin.views import cutover_view
from proxy.config import ModelConfig, ProxyConfig
from proxy.config.cutover import ProbeConfig
from proxy.cutover import Cutover
from proxy.cutover.probe import (
    DETAIL_CHARS,
    PROBE_RETRY_S,
    ProbeResult,
    answered,
    before_step,
    excerpt,
    iso_time,
    retry_after_s,
    timed_out,
    unreachable,
)
from proxy.cutover.sqlitestore import SqliteStore
from proxy.models import Backend
from proxy.probing import probe_inbound, url_segment
from tests.cutover.factory import Clock, config

pytestmark = pytest.mark.anyio

AT = 1_700_000_000.0  # 2023-11-14T22:13:20Z
PROBE = ProbeConfig(content_type="application/json; format=pandas-split", body='{"data": [[1]]}')


# --- the pure result ---------------------------------------------------------------------


def test_iso_time_is_utc_to_the_second() -> None:
    assert iso_time(AT) == "2023-11-14T22:13:20Z"


def test_the_expected_status_is_ok_whatever_the_body() -> None:
    result = answered(PROBE, 200, "application/json", b'{"predictions": [1]}', AT)
    assert result.ok
    assert result.note == "probe ok at 2023-11-14T22:13:20Z"
    assert result.to_json() == {
        "ok": True,
        "kind": "answered",
        "status": 200,
        "at": AT,
        "note": result.note,
    }


def test_another_status_fails_with_the_1x_message() -> None:
    body = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "Endpoint is scaling up."}'
    result = answered(PROBE, 503, "application/json", body, AT)
    assert not result.ok
    assert result.note == "probe failed: 503 Endpoint is scaling up. at 2023-11-14T22:13:20Z"


def test_an_unexpected_success_fails_too() -> None:
    expecting_201 = PROBE.model_copy(update={"expect_status": 201})
    assert not answered(expecting_201, 200, "application/json", b"[1]", AT).ok
    assert answered(expecting_201, 201, "application/json", b"[1]", AT).ok


def test_a_body_without_a_message_is_quoted_from_its_start_on_one_line() -> None:
    body = ("<html>\n<h1>Bad\tGateway</h1>" + "x" * 500).encode()
    detail = excerpt("text/html", body)
    assert detail.startswith("<html> <h1>Bad Gateway</h1>xxx")
    assert len(detail) == DETAIL_CHARS
    assert "\n" not in detail


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        pytest.param("application/json", b"not json", "not json", id="bad-json"),
        pytest.param("application/json", b'{"message": 5}', '{"message": 5}', id="non-text"),
        pytest.param("application/json", b"[1, 2]", "[1, 2]", id="not-an-object"),
        pytest.param(None, b'{"message": "m"}', '{"message": "m"}', id="no-content-type"),
        pytest.param("application/json", b"\xff\xfe", "\ufffd\ufffd", id="not-utf8"),
        pytest.param("text/plain", b"", "", id="empty"),
    ],
)
def test_excerpt_falls_back_to_the_body(
    content_type: str | None, body: bytes, expected: str
) -> None:
    assert excerpt(content_type, body) == expected


def test_an_empty_body_leaves_the_status_alone() -> None:
    result = answered(PROBE, 502, "text/plain", b"", AT)
    assert result.note == "probe failed: 502 at 2023-11-14T22:13:20Z"


def test_timeout_and_connection_errors_read_as_such() -> None:
    assert timed_out(PROBE, AT).note == "probe failed: timeout after 30 s at 2023-11-14T22:13:20Z"
    result = unreachable("Model endpoint is unavailable.\n(refused)", AT)
    assert result.kind == "unreachable"
    assert result.status is None
    assert result.note == (
        "probe failed: connection error: Model endpoint is unavailable. (refused) "
        "at 2023-11-14T22:13:20Z"
    )


# --- the decision before a step ----------------------------------------------------------


FAILED = answered(PROBE, 503, "application/json", b'{"message": "down"}', AT)
OK = answered(PROBE, 200, "application/json", b"[1]", AT)


def test_a_step_is_probed_first() -> None:
    decision = before_step(50, None, False, AT, 5)
    assert decision.kind == "probe"
    assert decision.reason == "probing the endpoint before the step to 50%"


def test_an_older_success_does_not_let_a_new_step_skip_its_probe() -> None:
    assert before_step(50, OK, False, AT + 1, 5).kind == "probe"


def test_a_probe_in_flight_holds_and_keeps_the_last_failure_in_view() -> None:
    assert before_step(50, None, True, AT, 5).kind == "hold"
    decision = before_step(50, FAILED, True, AT + 9, 5)
    assert decision.kind == "hold"
    assert decision.reason == (
        "probing the endpoint before the step to 50%; last probe failed: 503 down at "
        "2023-11-14T22:13:20Z"
    )


def test_a_failure_holds_the_next_probe_for_the_retry_pause() -> None:
    held = before_step(50, FAILED, False, AT + 2, 5)
    assert held.kind == "hold"
    assert held.reason == "probe failed: 503 down at 2023-11-14T22:13:20Z; next probe in 3 s"
    again = before_step(50, FAILED, False, AT + 5, 5)
    assert again.kind == "probe"
    assert again.reason.endswith("; last probe failed: 503 down at 2023-11-14T22:13:20Z")


def test_the_retry_pause_is_never_longer_than_the_interval() -> None:
    assert retry_after_s(3600) == PROBE_RETRY_S
    assert retry_after_s(1) == 1


# --- the probe's request -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "segment"),
    [
        pytest.param({"stages": {"Staging": "2", "Production": "3"}}, "Production", id="prod"),
        pytest.param({"versions": ["1", "4"], "stages": {"Staging": "4"}}, "4", id="last-ver"),
        pytest.param({"stages": {"Staging": "2"}}, "Staging", id="first-stage"),
        pytest.param({}, "1", id="any"),
    ],
)
def test_the_probe_names_a_url_the_model_serves(model: dict[str, object], segment: str) -> None:
    assert url_segment(ModelConfig.model_validate(model)) == segment


def test_the_probe_is_a_legacy_request_with_no_client_headers() -> None:
    model = ModelConfig.model_validate({"stages": {"Production": "3"}, "endpoint": "iris-ep"})
    inbound = probe_inbound("iris", model, PROBE)
    assert (inbound.ref.name, inbound.ref.version, inbound.ref.endpoint) == ("iris", "3", "iris-ep")
    assert inbound.path == inbound.raw_path == "/model/iris/Production/invocations"
    assert inbound.headers == [("content-type", PROBE.content_type)]
    assert inbound.body == PROBE.body.encode()
    assert inbound.client_host is None
    assert inbound.request_id.startswith("probe-")
    assert probe_inbound("iris", model, PROBE).request_id != inbound.request_id


# --- the controller ----------------------------------------------------------------------


class ScriptedProbe:
    """A probe the test answers: each call says it started, then waits for the status
    the test sends (so a probe in flight can be seen holding the step)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._statuses: asyncio.Queue[int] = asyncio.Queue()
        self.started: asyncio.Queue[str] = asyncio.Queue()

    async def answer(self, status: int) -> None:
        await self._statuses.put(status)

    async def __call__(self, model: str, probe: ProbeConfig) -> ProbeResult:
        self.started.put_nowait(model)
        status = await self._statuses.get()
        body = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "scaling"}'
        return answered(probe, status, "application/json", body, self.clock())


def probed_config() -> ProxyConfig:
    return config(
        {
            "iris": {
                "serverless_percent": 5,
                "rollout": {
                    "steps": [5, 25, 100],
                    "interval": "60s",
                    "gates": {"error_rate": {"max": 0.1, "min_samples": 10}},
                    "probe": {"content_type": "text/csv", "body": "a\n1\n"},
                },
            }
        }
    )


class Probed:
    """A started Cutover with a scripted probe, and what it tells: probe results and
    changes, as streams the test reads under a deadline."""

    def __init__(self, cutover: Cutover, clock: Clock, probe: ScriptedProbe) -> None:
        self.cutover, self.clock, self.probe = cutover, clock, probe
        self._told: asyncio.Queue[ProbeResult] = asyncio.Queue()
        self._changed: asyncio.Queue[str] = asyncio.Queue()
        cutover.on_probe.append(lambda _model, result: self._told.put_nowait(result))
        cutover.on_change.append(lambda _model, _state, action: self._changed.put_nowait(action))

    async def started(self) -> str:
        with anyio.fail_after(5):
            return await self.probe.started.get()

    async def told(self) -> ProbeResult:
        with anyio.fail_after(5):
            return await self._told.get()

    async def changed(self) -> str:
        with anyio.fail_after(5):
            return await self._changed.get()

    def reason(self) -> str:
        action = self.cutover.last_action("iris")
        assert action is not None
        return action.reason


@pytest.fixture
async def probed(tmp_path: Path) -> AsyncIterator[Probed]:
    clock = Clock()
    probe = ScriptedProbe(clock)
    cutover = Cutover(
        probed_config(),
        SqliteStore(str(tmp_path / "state.sqlite3")),
        clock=clock,
        rng=random.Random(0),
        poll_s=3600,  # the test ticks
        probe=probe,
    )
    await cutover.start()
    yield Probed(cutover, clock, probe)
    await cutover.aclose()


def feed(cutover: Cutover, ok: int, errors: int = 0) -> None:
    for _ in range(ok):
        cutover.count_call("iris", Backend.SERVERLESS, 200, 0.01)
    for _ in range(errors):
        cutover.count_call("iris", Backend.SERVERLESS, 503, 0.01)


async def test_a_failing_probe_holds_the_step_and_a_later_good_one_lets_it_go(
    probed: Probed,
) -> None:
    cutover, clock = probed.cutover, probed.clock
    clock.now += 60
    feed(cutover, ok=20)
    await cutover.tick()
    # The gates call for 25%: the probe is in flight and the weight waits for it.
    assert await probed.started() == "iris"
    assert cutover.weight("iris") == 5
    assert cutover.probing("iris")
    assert probed.reason() == "probing the endpoint before the step to 25%"
    view = cutover_view(cutover, "iris")["rollout"]
    assert (view["probing"], view["probe"], view["evaluation"]["action"]) == (True, None, "hold")
    await cutover.tick()  # one probe at a time
    assert probed.probe.started.empty()

    await probed.probe.answer(503)
    failed = await probed.told()
    assert not cutover.probing("iris")
    assert cutover.weight("iris") == 5
    assert failed.note == f"probe failed: 503 scaling at {iso_time(clock.now)}"
    assert cutover.last_probe("iris") == failed
    assert probed.reason() == f"{failed.note}; next probe in 5 s"
    assert [e.action for e in await cutover.history("iris")] == ["seed"]
    # Within the retry pause a tick sends nothing and keeps saying why.
    clock.now += 1
    await cutover.tick()
    assert probed.probe.started.empty()
    assert probed.reason().startswith(failed.note)

    clock.now += PROBE_RETRY_S
    await cutover.tick()
    assert await probed.started() == "iris"
    assert probed.reason().endswith(f"; last {failed.note}")
    await probed.probe.answer(200)
    assert (await probed.told()).ok
    assert await probed.changed() == "advance"
    assert cutover.weight("iris") == 25
    entry = (await cutover.history("iris"))[0]
    assert (entry.action, entry.actor) == ("advance", "rollout")
    view = cutover_view(cutover, "iris")["rollout"]
    assert view["probe"]["ok"]
    assert view["probe"]["note"] == f"probe ok at {iso_time(clock.now)}"
    assert not view["probing"]


async def test_a_rollback_while_probing_wins_over_the_probe(probed: Probed) -> None:
    cutover, clock = probed.cutover, probed.clock
    clock.now += 60
    feed(cutover, ok=20)
    await cutover.tick()
    await probed.started()
    feed(cutover, ok=0, errors=20)
    await cutover.tick()  # the error gate fails: rolled back without waiting for the probe
    assert await probed.changed() == "rollback"
    await probed.probe.answer(200)
    assert (await probed.told()).ok
    # The good probe was for the state before the rollback: nothing steps.
    assert cutover.weight("iris") == 0
    assert cutover.rollout_status("iris") == "rolled_back"
    assert [e.action for e in await cutover.history("iris")] == ["rollback", "seed"]


async def test_a_rollback_never_probes(probed: Probed) -> None:
    cutover = probed.cutover
    feed(cutover, ok=0, errors=20)
    await cutover.tick()
    assert cutover.weight("iris") == 0
    assert probed.probe.started.empty()
    assert cutover.last_probe("iris") is None


async def test_holding_gates_never_probe(probed: Probed) -> None:
    cutover = probed.cutover
    probed.clock.now += 60
    feed(cutover, ok=3)  # under min_samples: the gates hold
    await cutover.tick()
    assert probed.reason().startswith("holding: error_rate")
    assert not cutover.probing("iris")


async def test_an_admin_probe_is_remembered_and_told(probed: Probed) -> None:
    await probed.probe.answer(503)
    result = await probed.cutover.probe("iris")
    assert result is not None
    assert not result.ok
    assert probed.cutover.last_probe("iris") == result
    assert await probed.told() == result


async def test_without_a_probe_configured_there_is_nothing_to_probe(tmp_path: Path) -> None:
    async def never(model: str, probe: ProbeConfig) -> ProbeResult:
        raise AssertionError("no probe is configured")

    cutover = Cutover(
        config(), SqliteStore(str(tmp_path / "s.sqlite3")), clock=Clock(), poll_s=3600, probe=never
    )
    await cutover.start()
    try:
        assert await cutover.probe("iris") is None
    finally:
        await cutover.aclose()


async def test_a_probe_that_cannot_be_sent_holds_the_step(tmp_path: Path) -> None:
    clock = Clock()
    cutover = Cutover(
        probed_config(), SqliteStore(str(tmp_path / "s.sqlite3")), clock=clock, poll_s=3600
    )
    await cutover.start()
    try:
        clock.now += 60
        feed(cutover, ok=20)
        await cutover.tick()
        assert cutover.weight("iris") == 5
        action = cutover.last_action("iris")
        assert action is not None
        assert action.reason == "a probe is configured but cannot be sent"
    finally:
        await cutover.aclose()
