"""When to send a request again, and when to give up: the retry and cold-start rules. Pure.

A serverless endpoint answers 429 when a rate limit or its provisioned concurrency is
reached and 503 (or drops connections) while a replica starts; an always-on 1.x cluster
did neither, and legacy clients never retry. `proxy.retrying` asks these rules after each
failed attempt and does what they say; nothing here sleeps, reads a clock or draws a
random number of its own (the caller passes the time, the `Retry-After` value and the
random source), so every rule is a function of its arguments.

- An attempt is retried only when the upstream did not process the request: a 429 or 503
  answer, or a connection failure before any byte of the request was written
  (`UpstreamConnectError.sent` False). A reply the model may have produced (any other
  status) and a request the upstream may have read (a timeout or a close after writing)
  are never sent again.
- Ordinary retries (`retry:`) wait with exponential backoff and full jitter, honour
  `Retry-After` (RFC 9110 §10.2.3), start no later than `budget_s` after the first
  attempt, count against `max_attempts`, and each one spends a place in the proxy-wide
  retry budget (`proxy.retrybudget`).
- A cold-start hold (`cold_start: {hold_s}`) retries 503, 504 and connection failures
  while the request is within `hold_s` of its first attempt, beyond `budget_s` and
  `max_attempts`: held retries are paced by the same backoff but neither ask nor spend
  the proxy-wide retry budget, because a scale from zero fails every request at once and
  the budget would refuse most of a fleet that only needs to wait. A request still failing
  when its hold is over is "exhausted", and may spill back to legacy as `cold_start`.
- Every retry starts before the request's total deadline (`timeout.total` of the backend,
  counted from the first attempt), so a client never waits longer than one attempt could.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from proxy.config.resilience import ColdStartConfig, RetryConfig
from proxy.errors import ProxyError, UpstreamConnectError

# The retry reasons, as the record, the access log and the metrics name them.
CONNECT = "connect"
# Sent once more with a renewed token after a 401 to the proxy's own: the endpoint did not
# process it, and did not fail either (no rollout gate counts it).
REAUTHORIZED = "401"
# Statuses that may be retried: the first two when `retry.on` names them, the last only
# within a cold-start hold (an endpoint's gateway gave up on a replica still starting).
RETRY_STATUS_REASONS: dict[int, str] = {429: "429", 503: "503", 504: "504"}
HOLD_REASONS = frozenset({"503", "504", CONNECT})
# The spill reason of a request that was held and still failed.
COLD_START = "cold_start"
# Why retrying stopped with the request still failing (`ExchangeRecord.retry_stop`).
STOP_BUDGET_S = "budget_s"
STOP_MAX_ATTEMPTS = "max_attempts"
STOP_RETRY_BUDGET = "retry_budget"
STOP_RETRY_AFTER = "retry_after"
# Beyond this many doublings the cap is `backoff_s.max` for any sane configuration, and
# 2.0**n would overflow a float far later anyway.
_MAX_DOUBLINGS = 64


@dataclass(frozen=True, slots=True)
class Policy:
    """The retry rules of one model's calls to one backend, resolved once from the config
    (`ProxyConfig.retry_for`, `cold_start_for`) and kept on its `upstream.targets.Target`.

    Attributes:
        retry_on: the reasons ordinary retries take (`429`, `503`, `connect`).
        max_attempts: attempts in all outside a hold, the first included.
        budget_s: no ordinary retry starts later than this after the first attempt.
        base_s, max_s: the backoff: retry n waits uniform(0, min(max_s, base_s·2ⁿ)).
        hold_s: the cold-start hold (0: none).
        total_s: the request's total deadline from the first attempt (`timeout.total`).
    """

    retry_on: frozenset[str]
    max_attempts: int
    budget_s: float
    base_s: float
    max_s: float
    hold_s: float
    total_s: float


def policy_of(retry: RetryConfig, cold_start: ColdStartConfig, total_s: float) -> Policy | None:
    """The policy for one model and backend; None when it neither retries nor holds, so a
    call to it costs nothing extra."""
    if not retry.enabled and cold_start.hold_s <= 0:
        return None
    return Policy(
        retry_on=frozenset(str(reason) for reason in retry.on) if retry.enabled else frozenset(),
        max_attempts=retry.max_attempts,
        budget_s=retry.budget_s,
        base_s=retry.backoff_s.base,
        max_s=retry.backoff_s.max,
        hold_s=cold_start.hold_s,
        total_s=total_s,
    )


def status_reason(status: int) -> str | None:
    """The retry reason of an upstream answer, or None for one that is never retried."""
    return RETRY_STATUS_REASONS.get(status)


def error_reason(error: ProxyError) -> str | None:
    """The retry reason of a failed attempt: `connect` for a connection failure before any
    byte was written; None for anything the upstream may have processed."""
    if isinstance(error, UpstreamConnectError) and not error.sent:
        return CONNECT
    return None


@dataclass(frozen=True, slots=True)
class Retry:
    """Send the request again after `delay_s`; `held`: within a cold-start hold."""

    delay_s: float
    held: bool


@dataclass(frozen=True, slots=True)
class Stop:
    """Give up and answer with the last outcome; `reason` says why retries stopped while
    the request was retryable in kind (None: it never was, or retries are off)."""

    reason: str | None


NOT_RETRIED = Stop(None)
Step = Retry | Stop


def backoff(policy: Policy, retry: int, draw: Callable[[], float]) -> float:
    """Full jitter (the AWS Architecture Blog's "Exponential Backoff and Jitter"): the
    `retry`-th retry (0 for the first) waits uniform(0, min(max_s, base_s·2ʳᵉᵗʳʸ)).

    `draw` returns a float in [0, 1), as `random.random` does.
    """
    cap = min(policy.max_s, policy.base_s * 2.0 ** min(retry, _MAX_DOUBLINGS))
    return draw() * cap


def next_step(
    policy: Policy,
    reason: str | None,
    *,
    attempts: int,
    held: int,
    elapsed_s: float,
    retry_after_s: float | None,
    budget_ok: bool,
    draw: Callable[[], float],
) -> Step:
    """What to do after a failed attempt.

    Args:
        reason: the attempt's retry reason (`status_reason`, `error_reason`); None: the
            attempt is not retryable.
        attempts: attempts made so far, the first included.
        held: how many of the retries so far were made within the hold (they do not count
            against `max_attempts`).
        elapsed_s: time since the first attempt started.
        retry_after_s: the answer's `Retry-After` in seconds (`parse_retry_after`), if any.
        budget_ok: whether the proxy-wide retry budget has room for one more retry now.
        draw: the random source of the jitter.
    """
    if reason is None:
        return NOT_RETRIED
    retry = attempts - 1
    if policy.hold_s > 0 and reason in HOLD_REASONS and elapsed_s < policy.hold_s:
        left = policy.hold_s - elapsed_s
        delay = retry_after_s
        if delay is None:
            delay = min(backoff(policy, retry, draw), left)
        # Past the hold (the endpoint asks for more time than it has left) or past the
        # deadline: the ordinary rules say.
        if delay <= left and elapsed_s + delay < policy.total_s:
            return Retry(delay, held=True)
    if reason not in policy.retry_on:
        return NOT_RETRIED
    if attempts - held >= policy.max_attempts:
        return Stop(STOP_MAX_ATTEMPTS)
    left = policy.budget_s - elapsed_s
    if left <= 0:
        return Stop(STOP_BUDGET_S)
    if retry_after_s is not None:
        if retry_after_s > left:
            # Waiting as asked would end past the budget: answer now, not later.
            return Stop(STOP_RETRY_AFTER)
        delay = retry_after_s
    else:
        delay = min(backoff(policy, retry - held, draw), left)
    if elapsed_s + delay >= policy.total_s:
        # A retry must start before the request's deadline, or it cannot be answered.
        return Stop(STOP_BUDGET_S)
    if not budget_ok:
        return Stop(STOP_RETRY_BUDGET)
    return Retry(delay, held=False)


def spill_reason(reason: str | None, held: int) -> str | None:
    """Why a legacy client's failed request may go to the legacy backend instead (README
    "fallback"), or None when it must not: the serverless side may have processed it.

    A 429, a 503 and a connection failure before writing were not processed; a request
    held for a cold start and still failing with a hold reason is `cold_start`; a 504
    outside a hold is a gateway's timeout, which may have run the model.
    """
    if reason is None:
        return None
    if held and reason in HOLD_REASONS:
        return COLD_START
    if reason == "504":
        return None
    return reason


def failure_status(reason: str) -> int:
    """The status a failed serverless attempt counts as in the rollout's gates (a retried
    attempt, or a spilled request): the error gate counts 429 and 5xx alike."""
    return 429 if reason == "429" else 503


def parse_retry_after(value: str, now: float) -> float | None:
    """`Retry-After` in seconds from `now` (a Unix time), or None when it is neither form.

    RFC 9110 §10.2.3: delay-seconds (`1*DIGIT`) or an HTTP-date; a date in the past is
    0 seconds.
    """
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when: datetime = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 §5.6.7: HTTP-dates are GMT
        return None
    return max(0.0, when.timestamp() - now)
