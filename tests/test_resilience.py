"""The retry and cold-start rules (`proxy.resilience`): pure functions, checked by property
and by table."""

from __future__ import annotations

import email.utils
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.resilience import Backoff, ColdStartConfig, RetryConfig
from proxy.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from proxy.resilience import (
    COLD_START,
    NOT_RETRIED,
    STOP_BUDGET_S,
    STOP_MAX_ATTEMPTS,
    STOP_RETRY_AFTER,
    STOP_RETRY_BUDGET,
    Policy,
    Retry,
    Stop,
    backoff,
    error_reason,
    failure_status,
    next_step,
    parse_retry_after,
    policy_of,
    spill_reason,
    status_reason,
)

NOW = 1_700_000_000.0


def make_policy(
    *,
    on: tuple[str, ...] = ("429", "503", "connect"),
    max_attempts: int = 5,
    budget_s: float = 30.0,
    base_s: float = 0.2,
    max_s: float = 5.0,
    hold_s: float = 0.0,
    total_s: float = 60.0,
) -> Policy:
    return Policy(frozenset(on), max_attempts, budget_s, base_s, max_s, hold_s, total_s)


def draw_of(value: float):  # the jitter's random source, pinned
    return lambda: value


backoffs = st.tuples(st.floats(0.001, 10.0), st.floats(0.001, 60.0)).map(
    lambda bm: (min(bm), max(bm))
)
draws = st.floats(0.0, 1.0, exclude_max=True)
reasons = st.sampled_from(["429", "503", "connect"])


@given(bm=backoffs, retry=st.integers(0, 10_000), u=draws)
def test_backoff_is_full_jitter_within_the_cap(bm: tuple[float, float], retry: int, u: float):
    base, cap_max = bm
    policy = make_policy(base_s=base, max_s=cap_max)
    delay = backoff(policy, retry, draw_of(u))
    assert 0.0 <= delay <= min(cap_max, base * 2.0 ** min(retry, 64))


def test_backoff_doubles_until_the_max() -> None:
    policy = make_policy(base_s=0.25, max_s=1.0)
    almost_one = draw_of(0.999_999)
    assert [round(backoff(policy, n, almost_one), 3) for n in range(5)] == [
        0.25,
        0.5,
        1.0,
        1.0,
        1.0,
    ]


@given(
    bm=backoffs,
    budget_s=st.floats(0.1, 100.0),
    total_s=st.floats(0.1, 200.0),
    attempts=st.integers(1, 20),
    elapsed_s=st.floats(0.0, 200.0),
    retry_after=st.none() | st.floats(0.0, 300.0),
    budget_ok=st.booleans(),
    reason=reasons,
    u=draws,
)
def test_an_ordinary_retry_never_starts_past_the_budget_or_the_deadline(
    bm, budget_s, total_s, attempts, elapsed_s, retry_after, budget_ok, reason, u
) -> None:
    base, cap_max = bm
    policy = make_policy(base_s=base, max_s=cap_max, budget_s=budget_s, total_s=total_s)
    step = next_step(
        policy,
        reason,
        attempts=attempts,
        held=0,
        elapsed_s=elapsed_s,
        retry_after_s=retry_after,
        budget_ok=budget_ok,
        draw=draw_of(u),
    )
    if isinstance(step, Retry):
        assert not step.held
        assert budget_ok
        assert attempts < policy.max_attempts
        assert step.delay_s >= 0
        assert elapsed_s + step.delay_s <= budget_s + 1e-9
        assert elapsed_s + step.delay_s < total_s
        if retry_after is None:
            assert step.delay_s <= min(cap_max, base * 2.0 ** (attempts - 1))
        else:
            assert step.delay_s == retry_after  # the endpoint said when: honoured exactly
    else:
        assert step.reason in (
            STOP_BUDGET_S,
            STOP_MAX_ATTEMPTS,
            STOP_RETRY_AFTER,
            STOP_RETRY_BUDGET,
        )
        if retry_after is not None and retry_after > budget_s - elapsed_s > 0:
            assert step.reason in (STOP_MAX_ATTEMPTS, STOP_RETRY_AFTER)


@given(
    hold_s=st.floats(0.1, 100.0),
    elapsed_s=st.floats(0.0, 100.0),
    attempts=st.integers(1, 1000),
    reason=st.sampled_from(["503", "504", "connect"]),
    u=draws,
)
def test_within_the_hold_failures_are_retried_beyond_attempts_and_the_retry_budget(
    hold_s, elapsed_s, attempts, reason, u
) -> None:
    policy = make_policy(hold_s=hold_s, max_attempts=2, budget_s=1.0, total_s=1000.0)
    step = next_step(
        policy,
        reason,
        attempts=attempts,
        held=attempts - 1,
        elapsed_s=elapsed_s,
        retry_after_s=None,
        budget_ok=False,
        draw=draw_of(u),
    )
    if elapsed_s < hold_s:
        assert isinstance(step, Retry)
        assert step.held
        assert 0 <= step.delay_s <= hold_s - elapsed_s
    else:
        assert isinstance(step, Stop)


@pytest.mark.parametrize(
    ("kwargs", "step"),
    [
        pytest.param({"reason": None}, NOT_RETRIED, id="not-retryable"),
        pytest.param({"reason": "504"}, NOT_RETRIED, id="504-outside-a-hold"),
        pytest.param({"attempts": 5}, Stop(STOP_MAX_ATTEMPTS), id="max-attempts"),
        pytest.param({"elapsed_s": 30.0}, Stop(STOP_BUDGET_S), id="budget-spent"),
        pytest.param({"retry_after_s": 2.0, "elapsed_s": 29.0}, Stop(STOP_RETRY_AFTER), id="ra"),
        pytest.param({"retry_after_s": 2.0}, Retry(2.0, held=False), id="retry-after-honoured"),
        pytest.param({"budget_ok": False}, Stop(STOP_RETRY_BUDGET), id="retry-budget"),
        pytest.param({}, Retry(0.1, held=False), id="backoff"),
        pytest.param({"attempts": 3}, Retry(0.4, held=False), id="third-attempt-backoff"),
        pytest.param(
            {"elapsed_s": 59.99, "budget_s": 100.0}, Stop(STOP_BUDGET_S), id="past-the-deadline"
        ),
    ],
)
def test_next_step_rows(kwargs: dict, step: object) -> None:
    budget_s = kwargs.pop("budget_s", 30.0)
    args = {
        "reason": "429",
        "attempts": 1,
        "held": 0,
        "elapsed_s": 0.0,
        "retry_after_s": None,
        "budget_ok": True,
        "draw": draw_of(0.5),
        **kwargs,
    }
    assert next_step(make_policy(budget_s=budget_s), **args) == step


def test_a_reason_not_in_retry_on_is_not_retried() -> None:
    policy = make_policy(on=("429",))
    for reason in ("503", "connect"):
        step = next_step(
            policy,
            reason,
            attempts=1,
            held=0,
            elapsed_s=0.0,
            retry_after_s=None,
            budget_ok=True,
            draw=random.random,
        )
        assert step == NOT_RETRIED


def test_a_hold_does_not_cover_429_and_ends_into_the_ordinary_rules() -> None:
    policy = make_policy(hold_s=10.0, max_attempts=3)
    common = {"held": 4, "retry_after_s": None, "budget_ok": True, "draw": draw_of(0.5)}
    # A 429 is a rate limit, not a replica starting: ordinary rules, held retries free.
    assert next_step(policy, "429", attempts=5, elapsed_s=1.0, **common) == Retry(0.1, False)
    # Past the hold, a 504 is no longer retried, a 503 by the ordinary rules.
    assert next_step(policy, "504", attempts=5, elapsed_s=10.0, **common) == NOT_RETRIED
    assert next_step(policy, "503", attempts=5, elapsed_s=10.0, **common) == Retry(0.1, False)
    assert next_step(policy, "503", attempts=7, elapsed_s=10.0, **common) == Stop(STOP_MAX_ATTEMPTS)


def test_a_retry_after_past_the_hold_falls_to_the_ordinary_rules() -> None:
    policy = make_policy(hold_s=5.0, budget_s=30.0)
    common = {"attempts": 1, "held": 0, "budget_ok": True, "draw": draw_of(0.5)}
    assert next_step(policy, "503", elapsed_s=1.0, retry_after_s=3.0, **common) == Retry(3.0, True)
    assert next_step(policy, "503", elapsed_s=1.0, retry_after_s=8.0, **common) == Retry(8.0, False)
    assert next_step(policy, "503", elapsed_s=1.0, retry_after_s=40.0, **common) == Stop(
        STOP_RETRY_AFTER
    )


@pytest.mark.parametrize(
    ("status", "reason"), [(429, "429"), (503, "503"), (504, "504"), (200, None), (500, None)]
)
def test_status_reason(status: int, reason: str | None) -> None:
    assert status_reason(status) == reason


def test_only_a_connection_failure_before_writing_is_a_retry_reason() -> None:
    assert error_reason(UpstreamConnectError(sent=False)) == "connect"
    assert error_reason(UpstreamConnectError()) is None  # may have been processed
    assert error_reason(UpstreamTimeout()) is None
    assert error_reason(UpstreamProtocolError()) is None


@pytest.mark.parametrize(
    ("reason", "held", "spill"),
    [
        ("429", 0, "429"),
        ("503", 0, "503"),
        ("connect", 0, "connect"),
        ("504", 0, None),  # a gateway timeout: the model may have run
        (None, 0, None),
        ("503", 2, COLD_START),
        ("504", 2, COLD_START),
        ("connect", 1, COLD_START),
        ("429", 3, "429"),
    ],
)
def test_spill_reason(reason: str | None, held: int, spill: str | None) -> None:
    assert spill_reason(reason, held) == spill


def test_failure_status() -> None:
    assert [failure_status(r) for r in ("429", "503", "connect", COLD_START)] == [
        429,
        503,
        503,
        503,
    ]


def test_policy_of() -> None:
    assert policy_of(RetryConfig(on=()), ColdStartConfig(), 60.0) is None
    assert policy_of(RetryConfig(max_attempts=1), ColdStartConfig(), 60.0) is None
    held = policy_of(RetryConfig(on=()), ColdStartConfig(hold_s=20), 60.0)
    assert held is not None
    assert (held.retry_on, held.hold_s) == (frozenset(), 20.0)
    policy = policy_of(
        RetryConfig(budget_s=3, backoff_s=Backoff(base=0.1, max=1)), ColdStartConfig(), 9.0
    )
    assert policy == Policy(frozenset({"429", "503", "connect"}), 5, 3.0, 0.1, 1.0, 0.0, 9.0)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1", 1.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
        (email.utils.formatdate(NOW - 90, usegmt=True), 0.0),  # in the past: now
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
        ("-1", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        ("٣", None),  # a digit, but not an ASCII one
        ("Sun, 06 Nov 1994 08:49:37 -0000", None),  # no zone: not an HTTP-date
    ],
)
def test_parse_retry_after(value: str, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


@given(delta=st.integers(0, 10**7), now=st.integers(0, 2 * 10**9))
def test_retry_after_dates_read_back(delta: int, now: int) -> None:
    value = email.utils.formatdate(now + delta, usegmt=True)
    assert parse_retry_after(value, float(now)) == float(delta)
    assert parse_retry_after(str(delta), float(now)) == float(delta)
