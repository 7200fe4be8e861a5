"""How the proxy absorbs what serverless endpoints do that an always-on cluster did not:
`retry:`, `cold_start:` (per backend, and per model for the serverless side),
`retry_budget:` (proxy-wide) and a model's `max_in_flight:` / `queue:`. Pure.

The rules that use them are `proxy.resilience` (retries, holds) and `proxy.admission`
(per-model concurrency); README "When the endpoint is slow, cold, rate-limited or gone"
shows each.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from proxy.config.base import Frozen

# What may be retried: answers that say the request was not processed (429 from a rate
# limit or provisioned concurrency, 503 while a replica starts) and connection failures
# before any byte of the request was written.
RetryOn = Literal[429, 503, "connect"]
DEFAULT_RETRY_ON: tuple[RetryOn, ...] = (429, 503, "connect")
DEFAULT_RETRY_BUDGET_S = 30.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF_BASE_S = 0.2
DEFAULT_BACKOFF_MAX_S = 5.0
# Envoy's retry budget defaults: retries at most 20% of requests, with a floor.
DEFAULT_BUDGET_PERCENT = 20.0
DEFAULT_BUDGET_MIN_PER_S = 5.0
# The window over which `retry_budget` counts requests and retries.
RETRY_BUDGET_WINDOW_S = 10.0
DEFAULT_QUEUE_SIZE = 100
DEFAULT_QUEUE_TIMEOUT_S = 10.0


class Backoff(Frozen):
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(max, base·2ⁿ))."""

    base: float = Field(DEFAULT_BACKOFF_BASE_S, gt=0)
    max: float = Field(DEFAULT_BACKOFF_MAX_S, gt=0)

    @model_validator(mode="after")
    def _base_within_max(self) -> Backoff:
        if self.base > self.max:
            raise ValueError("base: must not be larger than max")
        return self


class RetryConfig(Frozen):
    """`retry:` of a backend (or a model's serverless side). `on: []` turns retries off."""

    on: tuple[RetryOn, ...] = DEFAULT_RETRY_ON
    # Time from the first attempt after which no retry starts (the upstream timeout still
    # bounds each attempt).
    budget_s: float = Field(DEFAULT_RETRY_BUDGET_S, gt=0)
    # Attempts in all, the first included: 1 means no retry.
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1)
    backoff_s: Backoff = Backoff()

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads a bare `on:` key as the boolean true.
        if isinstance(data, dict) and True in data and "on" not in data:
            return {("on" if key is True else key): value for key, value in data.items()}
        return data

    @property
    def enabled(self) -> bool:
        return bool(self.on) and self.max_attempts > 1


# The legacy backend's default: pass-through stays byte-exact, its answers as they came.
NO_RETRY = RetryConfig(on=())


class ColdStartConfig(Frozen):
    """`cold_start:`: within `hold_s` of a request's arrival, 503, 504 and connection
    failures are retried with backoff beyond the retry budget (0: off), so a scale from
    zero is absorbed instead of failing the client."""

    hold_s: float = Field(0.0, ge=0)


class RetryBudgetConfig(Frozen):
    """`retry_budget:`: the extra load retries may add, proxy-wide, over a 10 s window
    (Envoy's retry budgets): at most `percent` of the requests, but always
    `min_per_s` retries a second."""

    percent: float = Field(DEFAULT_BUDGET_PERCENT, ge=0, le=100)
    min_per_s: float = Field(DEFAULT_BUDGET_MIN_PER_S, ge=0)


class QueueConfig(Frozen):
    """A model's queue for requests beyond its `max_in_flight`: first come, first
    served; full, or waited `timeout_s`, the request gets 503 `Too many concurrent
    requests.`"""

    size: int = Field(DEFAULT_QUEUE_SIZE, ge=0)
    timeout_s: float = Field(DEFAULT_QUEUE_TIMEOUT_S, gt=0)
