"""The rollout gates' window: exact samples of one model since its current weight took effect.

Not the report window of `proxy.telemetry.stats` (time slots of HDR histograms over a fixed span):
the gates must judge only what happened at the current weight, so this window is cleared
whenever the weight moves, and a gate's p99 is exact over a bounded number of samples
rather than a histogram estimate. In memory, per process; no I/O, no clock of its own
(callers pass the time of each sample and of each summary).
"""

from __future__ import annotations

from collections import deque

from proxy.cutover.rollout import WindowStats

# Samples kept per model and kind; a busy model's window is then its newest samples.
MAX_WINDOW_SAMPLES = 20_000


def is_error(status: int) -> bool:
    """A serverless answer that counts against the error-rate gate: 5xx, or 429 (capacity).

    Other 4xx are the client's own mistakes, and legacy answered them the same way.
    """
    return status >= 500 or status == 429


class Window:
    """What this process saw of one model since its current weight took effect."""

    def __init__(self) -> None:
        self.serverless: deque[tuple[float, bool, float | None]] = deque(maxlen=MAX_WINDOW_SAMPLES)
        self.legacy: deque[tuple[float, float]] = deque(maxlen=MAX_WINDOW_SAMPLES)
        self.parity: deque[tuple[float, bool]] = deque(maxlen=MAX_WINDOW_SAMPLES)

    def clear(self) -> None:
        self.serverless.clear()
        self.legacy.clear()
        self.parity.clear()

    def summary(self, now: float, window_s: float) -> WindowStats:
        """Drop the samples older than `window_s` and summarise the rest for the gates."""
        start = now - window_s
        for samples in (self.serverless, self.legacy, self.parity):
            while samples and samples[0][0] < start:
                samples.popleft()
        return WindowStats(
            serverless_calls=len(self.serverless),
            serverless_errors=sum(1 for _, ok, _ in self.serverless if not ok),
            serverless_p99_s=_p99([s for _, _, s in self.serverless if s is not None]),
            legacy_calls=len(self.legacy),
            legacy_p99_s=_p99([s for _, s in self.legacy]),
            parity_samples=len(self.parity),
            parity_matches=sum(1 for _, ok in self.parity if ok),
        )


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    values.sort()
    return values[min(len(values) - 1, int(0.99 * len(values)))]
