"""The proxy-wide retry budget (`proxy.retrybudget`): a share of the requests over a
sliding window, with a floor; the time is passed in, so nothing here waits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.config.resilience import RETRY_BUDGET_WINDOW_S, RetryBudgetConfig
from proxy.retrybudget import RetryBudget

T0 = 5_000.0


def spend_all(budget: RetryBudget, now: float) -> int:
    """Retries taken at `now` until the budget refuses."""
    taken = 0
    while budget.allows(now):
        budget.spend(now)
        taken += 1
        assert taken < 100_000
    return taken


def test_the_floor_holds_for_a_quiet_proxy() -> None:
    budget = RetryBudget(RetryBudgetConfig(percent=20, min_per_s=5))
    # No request yet: min_per_s for each second of the window.
    assert spend_all(budget, T0) == 5 * RETRY_BUDGET_WINDOW_S


def test_retries_are_a_share_of_the_requests_in_the_window() -> None:
    budget = RetryBudget(RetryBudgetConfig(percent=20, min_per_s=0))
    for i in range(1000):
        budget.note_request(T0 + i / 1000)
    assert spend_all(budget, T0 + 0.999) == 200
    # More requests, more room: 20% of the 500 more.
    for _ in range(500):
        budget.note_request(T0 + 1.5)
    assert spend_all(budget, T0 + 1.5) == 100
    assert (budget.requests, budget.retries) == (1500, 300)


def test_the_window_slides_by_the_second() -> None:
    budget = RetryBudget(RetryBudgetConfig(percent=50, min_per_s=0))
    for _ in range(100):
        budget.note_request(T0)
    assert spend_all(budget, T0) == 50
    # Nine seconds on, the first second's requests and retries still count.
    assert not budget.allows(T0 + 9.5)
    for _ in range(10):
        budget.note_request(T0 + 9.5)
    assert spend_all(budget, T0 + 9.5) == 5
    # Ten seconds on, the first second has left the window: 10 requests, 5 retries.
    assert (budget.requests, budget.retries) == (110, 55)
    assert budget.allows(T0 + 10.0) is False
    assert (budget.requests, budget.retries) == (10, 5)
    # A long pause empties it.
    budget.note_request(T0 + 1000.0)
    assert (budget.requests, budget.retries) == (1, 0)


def test_zero_percent_and_no_floor_refuses_every_retry() -> None:
    budget = RetryBudget(RetryBudgetConfig(percent=0, min_per_s=0))
    budget.note_request(T0)
    assert not budget.allows(T0)


# (seconds since the last event, request or retry)
events = st.lists(
    st.tuples(st.floats(0.0, 3.0), st.sampled_from(["request", "retry"])), max_size=300
)


@given(
    percent=st.floats(0, 100),
    min_per_s=st.floats(0, 3),
    script=events,
)
def test_retries_never_exceed_the_budget_of_a_naive_count(
    percent: float, min_per_s: float, script: list[tuple[float, str]]
) -> None:
    """The ring agrees with counting every event of the last ten whole seconds."""
    budget = RetryBudget(RetryBudgetConfig(percent=percent, min_per_s=min_per_s))
    seen: list[tuple[int, str]] = []
    now = T0
    for gap, kind in script:
        now += gap
        second = int(now)
        window = [k for s, k in seen if s > second - RETRY_BUDGET_WINDOW_S]
        requests, retries = window.count("request"), window.count("retry")
        limit = max(percent / 100 * requests, min_per_s * RETRY_BUDGET_WINDOW_S)
        if kind == "request":
            budget.note_request(now)
            seen.append((second, kind))
        else:
            allowed = budget.allows(now)
            assert allowed == (retries < limit)
            if allowed:
                budget.spend(now)
                seen.append((second, kind))
        window = [k for s, k in seen if s > second - RETRY_BUDGET_WINDOW_S]
        assert (budget.requests, budget.retries) == (
            window.count("request"),
            window.count("retry"),
        )
