"""Shadowing: after the primary answer is ready, send the same request to the other backend
and compare the two answers. It can never delay, alter or fail the primary answer.

I/O (background tasks). The handler hands over a `ShadowJob` and returns at once;
`submit` never awaits and never raises. Concurrency is bounded: a job that finds every
slot taken is dropped and counted, so a slow shadow backend costs a fixed number of jobs,
never an unbounded queue (Envoy, nginx and Istio mirror fire-and-forget; here the answers
are compared too).

A job runs where `shadow.isolation` says: `mirror()` as a task on this event loop
(`inline`), or the same `mirror()` in the worker process (`process`, `shadow.worker`),
which hands back only its `Outcome`. Either way the tally and the listeners are kept
here, in the process that serves the admin API and the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from proxy.compare import DROPPED, Comparison, Tolerance
from proxy.config.cutover import ShadowConfig
from proxy.models import Backend
from proxy.shadow.job import Outcome, ShadowJob
from proxy.shadow.mirror import ShadowCall, mirror
from proxy.shadow.tally import Mismatch, ParityCounts, Tally
from proxy.tasks import TaskSet

LOGGER = logging.getLogger("serving_proxy.shadow")

Finish = Callable[[ShadowJob, Outcome], None]


class Worker(Protocol):
    """Runs jobs in another process under `isolation: process` (`shadow.worker`)."""

    @property
    def pid(self) -> int | None:
        """The worker process's id while one runs."""

    def submit(self, job: ShadowJob, finish: Finish) -> None:
        """Run `job` elsewhere; call `finish` with its outcome, exactly once."""

    async def aclose(self) -> None: ...


CallListener = Callable[[str, Backend, int, float], None]
ResultListener = Callable[[str, str], None]
MismatchListener = Callable[[str, Mismatch], None]
VerdictListener = Callable[[str, Comparison], None]


class Shadow:
    """Mirrors requests with bounded concurrency and keeps per-model parity.

    Args:
        config: the process-wide limits (`shadow:` in the config).
        call: makes a shadow call on this loop (`mirror.shadow_call`); used when there is
            no worker.
        tolerances: each model's compare settings; a model not listed uses the defaults.
        worker: runs the jobs in another process (`isolation: process`); None runs them
            as tasks on this event loop.
        clock: wall time for the mismatch records.

    Listeners (plain callables, called on the event loop, must not raise):
        `on_call(model, backend, status, seconds)`: every shadow call that reached a
        backend or failed on the way (status of the local error then), for the rollout
        gates; `on_verdict(model, comparison)`; `on_result(model, result)` with result one
        of the `Verdict` values or `dropped`, for metrics and the gates; `on_mismatch(model,
        mismatch)` for each mismatch kept, for the fleet's list.
    """

    def __init__(
        self,
        config: ShadowConfig,
        call: ShadowCall,
        tolerances: Mapping[str, Tolerance] | None = None,
        *,
        worker: Worker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.call = call
        self.tolerances = dict(tolerances or {})
        self.worker = worker
        self.tally = Tally(config.keep_mismatches, clock)
        self.on_call: list[CallListener] = []
        self.on_verdict: list[VerdictListener] = []
        self.on_result: list[ResultListener] = []
        self.on_mismatch: list[MismatchListener] = []
        self._tasks = TaskSet()
        # Counted by hand rather than len(self._tasks): a task leaves the set one loop turn
        # after its coroutine returns, and a worker's jobs hold no task here at all. The
        # counter drops in the same step that records the result (`_finish`).
        self._running = 0

    @property
    def in_flight(self) -> int:
        return self._running

    @property
    def worker_pid(self) -> int | None:
        return None if self.worker is None else self.worker.pid

    def drop_if_full(self, model: str) -> bool:
        """If every slot is taken, count a dropped job of `model` and say so: the caller
        need not build a job that `submit` would drop. Never raises."""
        if self._running < self.config.max_concurrency:
            return False
        try:
            self.tally.count_dropped(model)
            self._emit_result(model, DROPPED)
        except Exception:  # the primary answer must go out whatever happens here
            LOGGER.exception("counting a dropped shadow call failed for %s", model)
        return True

    def submit(self, job: ShadowJob) -> bool:
        """Start mirroring `job`, or drop it if every slot is taken. Never raises or waits.

        Returns:
            True if the shadow call was started.
        """
        try:
            if self.drop_if_full(job.model):
                return False
            self._running += 1
            try:
                if self.worker is not None:
                    self.worker.submit(job, self._finish)
                else:
                    name = f"shadow:{job.model}:{job.request_id}"
                    self._tasks.spawn(self._run(job), name=name)
            except BaseException:
                self._running -= 1  # nothing started: `_finish` will not come
                raise
            return True
        except Exception:  # the primary answer must go out whatever happens here
            LOGGER.exception("shadow submit failed for %s", job.model)
            return False

    async def _run(self, job: ShadowJob) -> None:
        try:
            outcome = await mirror(job, self.tolerances, self.call)
        except BaseException:
            self._running -= 1  # cancelled (shutdown): the slot is free, nothing to record
            raise
        self._finish(job, outcome)

    def _finish(self, job: ShadowJob, outcome: Outcome) -> None:
        self._running -= 1
        if outcome.call is not None:
            for call_listener in self.on_call:
                call_listener(job.model, job.shadow, *outcome.call)
        result = outcome.result
        payload = job.inbound.body if self.config.keep_payloads else None
        kept = self.tally.count(
            job.model, job.request_id, job.primary, result, outcome.answers, payload
        )
        if kept is not None:
            for mismatch_listener in self.on_mismatch:
                mismatch_listener(job.model, kept)
        for listener in self.on_verdict:
            listener(job.model, result)
        self._emit_result(job.model, str(result.verdict))

    def _emit_result(self, model: str, result: str) -> None:
        for listener in self.on_result:
            listener(model, result)

    def parity(self, model: str) -> ParityCounts:
        """A copy of one model's counts since this process started."""
        return self.tally.parity(model)

    def mismatches(self, model: str) -> list[Mismatch]:
        """The last `keep_mismatches` mismatches of one model, oldest first."""
        return self.tally.mismatches(model)

    async def aclose(self) -> None:
        await self._tasks.aclose()
        if self.worker is not None:
            await self.worker.aclose()
