"""The proxy-wide retry budget (`retry_budget:`): the extra load retries may add.

In memory, one per app (each worker process keeps its own). Envoy's retry budgets cap
retries as a share of the requests in flight; here, over a sliding window of
`RETRY_BUDGET_WINDOW_S` seconds, retries may be at most `percent`% of the requests that
could be retried, but always `min_per_s` a second, so a quiet proxy can still retry.
When an endpoint fails most requests, retries would multiply the load on it just when it
can least take it; the budget keeps upstream attempts within (1 + percent/100) of the
clients' requests.

Counts are kept in one slot per second of the window (a ring), so noting a request or a
retry costs O(1) whatever the rate, and the totals over the window are kept as running
sums. The caller passes the time (a monotonic clock, in seconds), so the budget is a
function of what it was told.
"""

from __future__ import annotations

import math

from proxy.config.resilience import RETRY_BUDGET_WINDOW_S, RetryBudgetConfig


class RetryBudget:
    """Requests and retries over the last `window_s` seconds, one slot per second."""

    __slots__ = (
        "_floor",
        "_requests",
        "_retries",
        "_second",
        "_share",
        "_slot_requests",
        "_slot_retries",
        "_slots",
    )

    def __init__(self, config: RetryBudgetConfig, window_s: float = RETRY_BUDGET_WINDOW_S) -> None:
        self._slots = max(1, math.ceil(window_s))
        self._share = config.percent / 100.0
        self._floor = config.min_per_s * self._slots
        self._slot_requests = [0] * self._slots
        self._slot_retries = [0] * self._slots
        self._requests = 0
        self._retries = 0
        # The second the newest slot stands for.
        self._second = 0

    def _advance(self, now: float) -> int:
        """Move the window to `now`, emptying the slots of the seconds that left it; the
        index of now's slot."""
        second = int(now)
        gone = second - self._second
        if gone > 0:
            slots = self._slots
            for step in range(1, min(gone, slots) + 1):
                index = (self._second + step) % slots
                self._requests -= self._slot_requests[index]
                self._retries -= self._slot_retries[index]
                self._slot_requests[index] = 0
                self._slot_retries[index] = 0
            self._second = second
        # A clock that stepped back (never, for a monotonic one) counts in the newest slot.
        return self._second % self._slots

    def note_request(self, now: float) -> None:
        """One request that could be retried started at `now`. On every such request, so
        the window moves only when a new second has begun."""
        index = self._second % self._slots if int(now) <= self._second else self._advance(now)
        self._slot_requests[index] += 1
        self._requests += 1

    def allows(self, now: float) -> bool:
        """Whether one more retry at `now` stays within the budget (nothing is spent)."""
        self._advance(now)
        return self._retries < max(self._share * self._requests, self._floor)

    def spend(self, now: float) -> None:
        """One retry started at `now`."""
        index = self._advance(now)
        self._slot_retries[index] += 1
        self._retries += 1

    @property
    def requests(self) -> int:
        """Requests in the window as last advanced."""
        return self._requests

    @property
    def retries(self) -> int:
        """Retries in the window as last advanced."""
        return self._retries
