"""Sending a client's call again: the I/O side of `proxy.resilience`'s rules.

`exchange._post` makes the first attempt; a 401 to the proxy's own token is sent once more
with a renewed one (`reauthorized`). Only when it fails in a way that could be
retried or spilled back (a 429, 503 or 504 answer, a connection failure before anything
was written) does it hand over to `again`, so a healthy call never reaches this module.
Here the rules are asked after each attempt, their pauses slept, the proxy-wide retry
budget spent, and the facts written down (`retries`, `retry_stop`, `held_s`).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Protocol

from proxy.credentials import TokenSource
from proxy.errors import UpstreamConnectError, UpstreamTimeout
from proxy.models import Body, UpstreamReply
from proxy.resilience import (
    REAUTHORIZED,
    RETRY_STATUS_REASONS,
    Retry,
    error_reason,
    next_step,
    parse_retry_after,
    spill_reason,
    status_reason,
)
from proxy.retrybudget import RetryBudget
from proxy.upstream.base import Upstream
from proxy.upstream.targets import Target

# The jitter's random source: spreading retries needs no secrecy.
_jitter = random.Random()


class RetryFacts(Protocol):
    """What the retries write down (`telemetry.record.ExchangeRecord` has them)."""

    retries: tuple[str, ...]
    retry_stop: str | None
    held_s: float


class SpillBack(Exception):
    """The serverless side did not process a spillable call: send it to legacy instead,
    before `deadline` (a `time.perf_counter()` value); `reason` as `resilience.spill_reason`
    says."""

    def __init__(self, reason: str, deadline: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.deadline = deadline


async def again(
    pool: Upstream,
    budget: RetryBudget,
    facts: RetryFacts,
    target: Target,
    request: tuple[str, list[tuple[str, str]], Body],
    t0: float,
    outcome: UpstreamReply | UpstreamConnectError,
    *,
    spillable: bool,
) -> UpstreamReply:
    """After a first attempt (started at `t0`) that failed in a retryable way: attempt
    `request` (path, headers, body) again as `resilience.next_step` says, then return the
    last answer or raise the last failure; with `spillable`, raise `SpillBack` instead when
    the upstream did not process the request and time is left. A failure the upstream may
    have processed ends it at once, raised.

    Each attempt ends by the request's total deadline (`timeout.total` from `t0`).
    """
    policy = target.retry
    deadline = t0 + (target.settings.total_timeout_s if policy is None else policy.total_s)
    attempts, held, held_until = 1, 0, t0
    retries = list(facts.retries)
    try:
        while True:
            if isinstance(outcome, UpstreamConnectError):
                reason, retry_after = error_reason(outcome), None
            else:
                reason = status_reason(outcome.status)
                value = outcome.header("retry-after")
                retry_after = None if value is None else parse_retry_after(value, time.time())
            now = time.perf_counter()
            step = None
            if policy is not None and reason is not None:
                step = next_step(
                    policy,
                    reason,
                    attempts=attempts,
                    held=held,
                    elapsed_s=now - t0,
                    retry_after_s=retry_after,
                    budget_ok=budget.allows(now),
                    draw=_jitter.random,
                )
            if not isinstance(step, Retry):
                if step is not None:
                    facts.retry_stop = step.reason
                if spillable:
                    spill = spill_reason(reason, held)
                    if spill is not None and now < deadline:
                        raise SpillBack(spill, deadline)
                if isinstance(outcome, UpstreamConnectError):
                    raise outcome
                return outcome
            assert reason is not None  # next_step retries only a reason
            if not step.held:
                budget.spend(now)
            retries.append(reason)
            await asyncio.sleep(step.delay_s)
            attempts += 1
            if step.held:
                held += 1
                held_until = time.perf_counter()
            outcome = await _attempt(pool, request, deadline)
            if isinstance(outcome, UpstreamReply) and outcome.status not in RETRY_STATUS_REASONS:
                return outcome
    finally:
        facts.retries = tuple(retries)
        if held:
            facts.held_s = held_until - t0


async def reauthorized(
    pool: Upstream,
    source: TokenSource,
    request: tuple[str, list[tuple[str, str]], Body],
    rejected: UpstreamReply,
    facts: RetryFacts,
) -> tuple[list[tuple[str, str]], UpstreamReply]:
    """After the upstream answered 401 to the token from `source`: renew it and send
    `request` once more (a 401 means the request was not processed), written down as a
    retry (`REAUTHORIZED`). Returns the headers to send any further attempt with, and the
    answer; the 401 stands when the source has no other token."""
    path, headers, body = request
    sent = next((value for name, value in headers if name == "authorization"), "")
    scheme, _, token = sent.partition(" ")
    renewed = await source.renew(token) if scheme == "Bearer" and token else None
    if renewed is None:
        return headers, rejected
    headers = [(name, value) for name, value in headers if name != "authorization"]
    headers.append(("authorization", f"Bearer {renewed}"))
    facts.retries = (*facts.retries, REAUTHORIZED)
    return headers, await pool.send("POST", path, headers, body)


async def _attempt(
    pool: Upstream, request: tuple[str, list[tuple[str, str]], Body], deadline: float
) -> UpstreamReply | UpstreamConnectError:
    """One more attempt, ended by the request's deadline (sooner than the pool's own
    timeout, which counts from this attempt); a connection failure before writing is
    returned as an outcome, any other failure raised."""
    path, headers, body = request
    try:
        async with asyncio.timeout(deadline - time.perf_counter()):
            return await pool.send("POST", path, headers, body)
    except TimeoutError as exc:
        raise UpstreamTimeout() from exc
    except UpstreamConnectError as exc:
        if exc.sent:
            raise
        return exc
