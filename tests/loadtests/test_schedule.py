"""The fixed-arrival-rate schedule: how many requests, when, and who sends which."""

from __future__ import annotations

import pytest

from loadtests.schedule import Step, arrivals, expected_count, plan, share


@pytest.mark.parametrize(
    ("rate", "duration", "count"),
    [
        pytest.param(50, 4, 200, id="whole"),
        pytest.param(50, 8, 400, id="float-product-not-201"),
        pytest.param(0.5, 3, 2, id="slow-rate-rounds-up"),
        pytest.param(3, 1.1, 4, id="partial-second"),
    ],
)
def test_a_run_holds_rate_times_duration_requests(rate: float, duration: float, count: int) -> None:
    steps = plan(rate, duration)
    assert expected_count(steps) == count
    assert len(list(arrivals(steps))) == count


def test_arrivals_are_evenly_spaced_from_zero() -> None:
    assert list(arrivals(plan(4, 1))) == [0.0, 0.25, 0.5, 0.75]


def test_ramp_climbs_in_equal_stairs_then_holds() -> None:
    steps = plan(40, 10, ramp_steps=4, ramp_s=8)
    assert steps == (Step(10, 2), Step(20, 2), Step(30, 2), Step(40, 2), Step(40, 2))
    offsets = list(arrivals(steps))
    assert len(offsets) == 20 + 40 + 60 + 80 + 80
    assert offsets == sorted(offsets)
    assert offsets[20] == pytest.approx(2.0)  # the second stair starts on time


def test_a_ramp_as_long_as_the_run_has_no_hold() -> None:
    assert plan(10, 4, ramp_steps=2, ramp_s=4) == (Step(5, 2), Step(10, 2))


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"rate": 0, "duration": 1}, id="zero-rate"),
        pytest.param({"rate": 1, "duration": -1}, id="negative-duration"),
        pytest.param({"rate": float("nan"), "duration": 1}, id="nan-rate"),
        pytest.param({"rate": 1, "duration": 4, "ramp_steps": 2, "ramp_s": 5}, id="ramp-too-long"),
        pytest.param({"rate": 1, "duration": 4, "ramp_steps": 2, "ramp_s": 0}, id="ramp-no-time"),
    ],
)
def test_plans_that_cannot_run_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"rate|duration|ramp"):
        plan(**kwargs)  # type: ignore[arg-type]


def test_senders_split_the_schedule_without_gaps_or_overlap() -> None:
    offsets = list(arrivals(plan(30, 2)))
    parts = [list(share(offsets, index, 3)) for index in range(3)]
    numbers = sorted(number for part in parts for number, _ in part)
    assert numbers == list(range(len(offsets)))
    # Interleaved: each sender keeps a third of the rate from the very start.
    assert [number for number, _ in parts[1][:3]] == [1, 4, 7]


def test_a_sender_index_outside_the_count_is_refused() -> None:
    with pytest.raises(ValueError, match="sender index"):
        list(share([0.0], 2, 2))
