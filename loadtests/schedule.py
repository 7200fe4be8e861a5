"""When each request of a fixed-arrival-rate run is due. Pure: no clock, no I/O, no locust.

An open-model run sends request *i* at its own offset from the start, whatever happened to
the requests before it; the offsets come from here, and the locust user only sleeps until
each one is due. Ramp steps raise the rate in equal stairs before it holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# A step of 50 req/s for 4 s holds exactly 200 requests, not 201 because 4.0 * 50 came out
# as 200.00000000000003.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Step:
    """`rate` requests per second, evenly spaced, for `seconds`."""

    rate: float
    seconds: float

    @property
    def count(self) -> int:
        return max(0, math.ceil(self.rate * self.seconds - _EPSILON))


def plan(
    rate: float, duration: float, *, ramp_steps: int = 0, ramp_s: float = 0.0
) -> tuple[Step, ...]:
    """The steps of a run: `ramp_steps` equal stairs up to `rate` over `ramp_s`, then `rate`.

    With `ramp_steps=4, ramp_s=8, rate=40`: 10, 20, 30, 40 req/s for 2 s each, then 40 req/s
    until `duration` (the ramp is part of the duration).

    Raises:
        ValueError: a rate or duration that is not positive, or a ramp longer than the run.
    """
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError("rate must be a positive number of requests per second")
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError("duration must be a positive number of seconds")
    if ramp_steps < 0 or ramp_s < 0:
        raise ValueError("ramp steps and ramp seconds must not be negative")
    if ramp_steps and not 0 < ramp_s <= duration:
        raise ValueError("the ramp must last more than 0 s and no longer than the run")
    steps = [Step(rate * (k + 1) / ramp_steps, ramp_s / ramp_steps) for k in range(ramp_steps)]
    hold = duration - (ramp_s if ramp_steps else 0.0)
    if hold > _EPSILON:
        steps.append(Step(rate, hold))
    return tuple(steps)


def arrivals(steps: Iterable[Step]) -> Iterator[float]:
    """Every request's offset from the start of the run, in seconds, in order."""
    start = 0.0
    for step in steps:
        for k in range(step.count):
            yield start + k / step.rate
        start += step.seconds


def expected_count(steps: Iterable[Step]) -> int:
    """How many requests the whole schedule holds."""
    return sum(step.count for step in steps)


def share(offsets: Iterable[float], index: int, count: int) -> Iterator[tuple[int, float]]:
    """The part of a schedule one of `count` senders owns: every `count`-th request.

    Interleaving (rather than cutting the run in time slices) keeps each sender at the same
    share of the rate all along, so the senders together keep the schedule. Yields
    `(global request number, offset)`.
    """
    if not 0 <= index < count:
        raise ValueError(f"sender index {index} is not in 0..{count - 1}")
    for number, offset in enumerate(offsets):
        if number % count == index:
            yield number, offset
