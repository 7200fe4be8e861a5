"""Shadowing: after the primary answer is ready, send the same request to the other backend
and compare the two answers. It can never delay, alter or fail the primary answer.

I/O (background tasks). The handler hands over a `ShadowJob` (the primary's answer and a
ready-made call to the other backend) and returns at once; `submit` never awaits and never
raises. Concurrency is bounded: a job that finds every slot taken is dropped and counted,
so a slow shadow backend costs a fixed number of jobs, never an unbounded queue (Envoy,
nginx and Istio mirror fire-and-forget; here the answers are compared, issue 3 §5).

A job runs where `shadow.isolation` says: `mirror()` as a task on this event loop
(`inline`), or the same `mirror()` in a worker process (`process`, `proxy.shadowworker`),
which hands back only its `Outcome`. Either way the counts, mismatches and listeners are
kept here, in the process that serves the admin API and the metrics.

Background tasks are held by a `TaskSet`, the one place in `proxy/` that creates tasks
(ruff bans bare `asyncio.create_task`): the event loop keeps only weak references, so an
unreferenced task can be garbage-collected mid-flight (mitmproxy's asyncio_utils).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from proxy.compare import Answer, Comparison, Tolerance, Verdict, compare, shadow_error
from proxy.config import ProxyConfig, ShadowConfig
from proxy.errors import (
    Overloaded,
    ProxyError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from proxy.models import Backend, ModelRef, Reply
from proxy.upstream import content_coding, decode_content

LOGGER = logging.getLogger("serving_proxy.shadow")
# A shadow call that could not produce an answer: the backend's fault, not the request's.
CALL_FAILURES = (UpstreamConnectError, UpstreamTimeout, UpstreamProtocolError, Overloaded)
DROPPED = "dropped"
# Bodies kept with a mismatch when `keep_payloads` is on, cut to this many bytes.
MAX_PAYLOAD_BYTES = 4096

Finish = Callable[["ShadowJob", "Outcome"], None]


class Worker(Protocol):
    """Runs jobs in another process under `isolation: process` (proxy.shadowworker)."""

    @property
    def pid(self) -> int | None:
        """The worker process's id while one runs."""

    def submit(self, job: ShadowJob, finish: Finish) -> None:
        """Run `job` elsewhere; call `finish` with its outcome, exactly once."""

    async def aclose(self) -> None: ...


CallListener = Callable[[str, Backend, int, float], None]
ResultListener = Callable[[str, str], None]
VerdictListener = Callable[[str, Comparison], None]


class TaskSet:
    """Strong references to background tasks until they finish; errors are logged."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            LOGGER.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def aclose(self) -> None:
        """Cancel what is still running and wait for it to unwind."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, slots=True)
class ShadowRequest:
    """A legacy request as a shadow call needs it, in plain values: what the shadow worker
    process (`proxy.shadowworker`) needs to make the call itself (`handlers.shadow_send`)."""

    ref: ModelRef
    path: str
    raw_path: bytes | None
    query_string: bytes
    client: tuple[str, int] | None
    incoming: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class ShadowJob:
    """One request to mirror.

    Attributes:
        model: the configured model name.
        request_id: the client request's id, kept with a mismatch.
        primary, shadow: which backend answered the client, which one is shadowed.
        primary_reply: the answer the client got, in the legacy client's form.
        call: sends the already-built request to the shadow backend and returns its answer
            in the same form (a serverless answer through `translate.v2_to_legacy`); raises
            a `ProxyError` as the primary path would.
        payload: the request body, kept with a mismatch only when the config allows.
        request: what a worker process needs to make `call` itself; None when only this
            process can make it.
    """

    model: str
    request_id: str
    primary: Backend
    shadow: Backend
    primary_reply: Reply
    call: Callable[[], Awaitable[Reply]]
    payload: bytes | None = None
    request: ShadowRequest | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What mirroring one job found, wherever it ran.

    Attributes:
        result: the verdict, and where the answers first differ.
        call: the shadow call's status and seconds when one was made (a local error's
            status when it failed on the way), for the rollout gates.
        answers: both answers as compared, when there were two.
    """

    result: Comparison
    call: tuple[int, float] | None = None
    answers: tuple[Answer, Answer] | None = None


def tolerances_of(config: ProxyConfig) -> dict[str, Tolerance]:
    """Each configured model's compare settings (`compare:`)."""
    return {name: Tolerance.from_config(m.compare) for name, m in config.models.items()}


async def mirror(job: ShadowJob, tolerances: Mapping[str, Tolerance]) -> Outcome:
    """Make the shadow call and compare its answer with the primary's, by the model's
    tolerance (the defaults for a model not listed). Never raises but for cancellation:
    every failure is an outcome."""
    t0 = time.perf_counter()
    call: tuple[int, float] | None = None
    try:
        reply = await job.call()
    except CALL_FAILURES as exc:
        return Outcome(shadow_error(exc.flag), (exc.status_code, time.perf_counter() - t0))
    except ProxyError as exc:
        # Refused before any backend saw it (a body the serverless side cannot take):
        # the client would have got this local reply, so that is the shadow's answer.
        reply = exc.to_reply()
    except Exception as exc:
        LOGGER.exception("shadow call failed for %s", job.model)
        return Outcome(shadow_error(f"BUG {type(exc).__name__}"))
    else:
        call = (reply.status, time.perf_counter() - t0)
    primary, shadow = answer_of(job.primary_reply), answer_of(reply)
    tolerance = tolerances.get(job.model) or Tolerance()
    return Outcome(compare(primary, shadow, tolerance), call, (primary, shadow))


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A mismatch as the admin API lists it: where the answers first differ, and how."""

    at: float
    request_id: str
    verdict: str
    path: str | None
    primary_backend: str
    primary: Any
    shadow: Any
    detail: str | None
    request: str | None = None
    primary_body: str | None = None
    shadow_body: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "at": self.at,
            "request_id": self.request_id,
            "verdict": self.verdict,
            "path": self.path,
            "primary_backend": self.primary_backend,
            "primary": self.primary,
            "shadow": self.shadow,
            "detail": self.detail,
        }
        if self.request is not None:
            out |= {
                "request": self.request,
                "primary_body": self.primary_body,
                "shadow_body": self.shadow_body,
            }
        return out


@dataclass(slots=True)
class ParityCounts:
    """One model's shadow results since this process started."""

    match: int = 0
    shape_mismatch: int = 0
    value_mismatch: int = 0
    status_mismatch: int = 0
    shadow_error: int = 0
    dropped: int = 0

    @property
    def compared(self) -> int:
        return self.match + self.shape_mismatch + self.value_mismatch + self.status_mismatch

    @property
    def rate(self) -> float | None:
        """Matches over compared answers (shadow errors and drops are not answers)."""
        return self.match / self.compared if self.compared else None

    def to_json(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "shape_mismatch": self.shape_mismatch,
            "value_mismatch": self.value_mismatch,
            "status_mismatch": self.status_mismatch,
            "shadow_error": self.shadow_error,
            "dropped": self.dropped,
            "compared": self.compared,
            "rate": self.rate,
        }


def decoded_body(reply: Reply) -> bytes:
    """A pass-through reply's bytes without their Content-Encoding, for comparing (as
    received when the coding is unknown or the bytes are not in it)."""
    coding = content_coding(reply.headers)  # a translated reply has no headers at all
    if coding is None:
        return reply.body
    try:
        decoded = decode_content(coding, reply.body)
    except zlib.error:
        return reply.body
    return reply.body if decoded is None else decoded


def answer_of(reply: Reply) -> Answer:
    return Answer(reply.status, decoded_body(reply))


def _cut(data: bytes) -> str:
    return data[:MAX_PAYLOAD_BYTES].decode("utf-8", errors="replace")


@dataclass
class _Book:
    counts: ParityCounts = field(default_factory=ParityCounts)
    mismatches: deque[Mismatch] = field(default_factory=deque)


class Shadow:
    """Mirrors requests with bounded concurrency and keeps per-model parity.

    Args:
        config: the process-wide limits (`shadow:` in the config).
        tolerances: each model's compare settings; a model not listed uses the defaults.
        worker: runs the jobs in another process (`isolation: process`); None runs them
            as tasks on this event loop. Jobs without a `request` always run here.
        clock: wall time for the mismatch records.

    Listeners (plain callables, called on the event loop, must not raise):
        `on_call(model, backend, status, seconds)`: every shadow call that reached a
        backend or failed on the way (status of the local error then), for the rollout
        gates; `on_verdict(model, comparison)`; `on_result(model, result)` with result one
        of the `Verdict` values or `dropped`, for metrics.
    """

    def __init__(
        self,
        config: ShadowConfig,
        tolerances: Mapping[str, Tolerance] | None = None,
        *,
        worker: Worker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.tolerances = dict(tolerances or {})
        self.worker = worker
        self.clock = clock
        self.on_call: list[CallListener] = []
        self.on_verdict: list[VerdictListener] = []
        self.on_result: list[ResultListener] = []
        self._tasks = TaskSet()
        # Counted by hand rather than len(self._tasks): a task leaves the set one loop turn
        # after its coroutine returns, and a worker's jobs hold no task here at all. The
        # counter drops in the same step that records the result (`_finish`).
        self._running = 0
        self._books: dict[str, _Book] = {}

    @property
    def in_flight(self) -> int:
        return self._running

    @property
    def worker_pid(self) -> int | None:
        return None if self.worker is None else self.worker.pid

    def _book(self, model: str) -> _Book:
        book = self._books.get(model)
        if book is None:
            book = self._books[model] = _Book(mismatches=deque(maxlen=self.config.keep_mismatches))
        return book

    def drop_if_full(self, model: str) -> bool:
        """If every slot is taken, count a dropped job of `model` and say so: the caller
        need not build a job that `submit` would drop. Never raises."""
        if self._running < self.config.max_concurrency:
            return False
        try:
            self._book(model).counts.dropped += 1
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
                if self.worker is not None and job.request is not None:
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
            outcome = await mirror(job, self.tolerances)
        except BaseException:
            self._running -= 1  # cancelled (shutdown): the slot is free, nothing to record
            raise
        self._finish(job, outcome)

    def _finish(self, job: ShadowJob, outcome: Outcome) -> None:
        self._running -= 1
        if outcome.call is not None:
            self._emit_call(job.model, job.shadow, *outcome.call)
        self._record(job, outcome.result, outcome.answers)

    def _record(
        self, job: ShadowJob, result: Comparison, answers: tuple[Answer, Answer] | None
    ) -> None:
        book = self._book(job.model)
        counts = book.counts
        setattr(counts, str(result.verdict), getattr(counts, str(result.verdict)) + 1)
        if result.verdict is not Verdict.MATCH and book.mismatches.maxlen != 0:
            mismatch = Mismatch(
                at=self.clock(),
                request_id=job.request_id,
                verdict=str(result.verdict),
                path=result.path,
                primary_backend=str(job.primary),
                primary=result.primary,
                shadow=result.shadow,
                detail=result.detail,
            )
            if self.config.keep_payloads and job.payload is not None:
                mismatch = replace(
                    mismatch,
                    request=_cut(job.payload),
                    primary_body=None if answers is None else _cut(answers[0].body),
                    shadow_body=None if answers is None else _cut(answers[1].body),
                )
            book.mismatches.append(mismatch)
        for listener in self.on_verdict:
            listener(job.model, result)
        self._emit_result(job.model, str(result.verdict))

    def _emit_call(self, model: str, backend: Backend, status: int, seconds: float) -> None:
        for listener in self.on_call:
            listener(model, backend, status, seconds)

    def _emit_result(self, model: str, result: str) -> None:
        for listener in self.on_result:
            listener(model, result)

    # --- read side: the admin API and the reports (issue 4) ---------------------------------

    def parity(self, model: str) -> ParityCounts:
        """A copy of one model's counts since this process started."""
        counts = self._book(model).counts
        return replace(counts)

    def mismatches(self, model: str) -> list[Mismatch]:
        """The last `keep_mismatches` mismatches of one model, oldest first."""
        return list(self._book(model).mismatches)

    async def aclose(self) -> None:
        await self._tasks.aclose()
        if self.worker is not None:
            await self.worker.aclose()
