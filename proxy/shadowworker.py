"""The shadow worker: a process of its own that makes the shadow calls and compares the
answers (issue 3 §5; `shadow.isolation: process`, the default).

Why a process. One event loop answers every client of a proxy process, and a shadow call
costs that loop about what the primary request does: one more upstream exchange, the
translation both ways and the comparison, which for a large answer that is not byte-equal
takes tens of milliseconds (~80 ms for 10,000 rows of two numbers). Run there, mirroring
takes throughput from the clients and its comparisons stall their answers
(`benchmarks/routing.py` prints the figures). In a worker the same work (`shadow.mirror`,
the same code as `inline`) runs on another core, and the proxy's loop only hands over the
job and books the outcome.

Both ends of one socket pair live here. The proxy side (`ShadowWorker`) starts the
worker on the first job, sends it the config, then jobs; the worker answers each job with
its `Outcome`, and the proxy keeps the counts, mismatches and listeners as before.
The messages of one loop turn leave as one frame, a pickled list behind a 4-byte length
(pickle: both ends are this package, and the peer is the proxy's own child on an unnamed
socket pair). Jobs and outcomes travel as flat tuples of plain values (`_job_message`,
`_outcome_message`): pickling the frozen dataclasses and enums themselves cost ten times
more, on the loop this module exists to spare.

Failure and shutdown. If the worker exits, its jobs in flight become shadow errors and
the next job starts a new worker, at most one start per `RESTART_S` (jobs in between are
shadow errors too, so a worker that cannot start never loops). The worker ignores SIGINT
and SIGTERM: it stops when the proxy closes the socket pair at shutdown, or dies, so a
Ctrl-C or a container stop leaves the order of things to the proxy's own shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.accesslog import configure_logging
from proxy.compare import MATCH, Answer, Comparison, Tolerance, Verdict, shadow_error
from proxy.config import ProxyConfig
from proxy.models import Backend, ModelRef, Reply
from proxy.shadow import (
    Finish,
    Outcome,
    ShadowJob,
    ShadowRequest,
    TaskSet,
    mirror,
    tolerances_of,
)

if TYPE_CHECKING:
    from proxy.runtime import Upstreams  # the runtime imports this module

LOGGER = logging.getLogger("serving_proxy.shadow")
LENGTH = struct.Struct("!I")
# At most one worker start per this many seconds (module docstring).
RESTART_S = 1.0
# How long shutdown waits for the worker to exit after closing its socket, then kills it.
STOP_S = 5.0
UNAVAILABLE = shadow_error("shadow worker unavailable")
EXITED = shadow_error("shadow worker exited")


class _Channel(asyncio.Protocol):
    """Messages over one stream, both ways. All messages sent in one loop turn (or before
    the connection is made) leave as one frame, a pickled list behind its 4-byte length:
    one pickle call and one write per turn rather than per message."""

    def __init__(self, on_message: Callable[[Any], None], on_closed: Callable[[], None]) -> None:
        self._on_message = on_message
        self._on_closed = on_closed
        self._transport: asyncio.Transport | None = None
        self._inbox = bytearray()
        self._outbox: list[Any] = []

    def send(self, message: object) -> None:
        if not self._outbox and self._transport is not None:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(message)

    def _flush(self) -> None:
        if not self._outbox or self._transport is None or self._transport.is_closing():
            return
        frame = pickle.dumps(self._outbox, pickle.HIGHEST_PROTOCOL)
        self._outbox.clear()
        self._transport.write(LENGTH.pack(len(frame)) + frame)

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._flush()

    def data_received(self, data: bytes) -> None:
        inbox = self._inbox
        inbox += data
        start = 0
        while len(inbox) - start >= LENGTH.size:
            (size,) = LENGTH.unpack_from(inbox, start)
            end = start + LENGTH.size + size
            if len(inbox) < end:
                break
            messages = pickle.loads(inbox[start + LENGTH.size : end])
            start = end
            for message in messages:
                self._on_message(message)
        del inbox[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._on_closed()


class ShadowWorker:
    """The proxy's side: starts the worker process, hands it jobs, books what comes back.

    A `shadow.Worker`. Every job submitted gets its `finish` called exactly once: with
    the worker's outcome, or with a shadow error if the worker is unavailable or exits
    first. Shadow calls in the worker use the client `server.upstream_client` names.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: _Channel | None = None
        self._jobs: dict[int, tuple[ShadowJob, Finish]] = {}
        self._next_id = 0
        self._started_at = -RESTART_S
        self._closed = False
        self._tasks = TaskSet()

    @property
    def pid(self) -> int | None:
        """The running worker's process id, if one is running."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def submit(self, job: ShadowJob, finish: Finish) -> None:
        channel = self._channel or self._start()
        if channel is None:
            finish(job, Outcome(UNAVAILABLE))
            return
        job_id = self._next_id
        self._next_id += 1
        channel.send(_job_message(job_id, job, self.config.shadow.keep_payloads))
        self._jobs[job_id] = (job, finish)

    def _start(self) -> _Channel | None:
        now = time.monotonic()
        if self._closed or now - self._started_at < RESTART_S:
            return None
        self._started_at = now
        self._reap()
        ours, theirs = socket.socketpair()
        try:
            self._process = _spawn(theirs.fileno())
        except OSError:
            LOGGER.exception("could not start the shadow worker")
            ours.close()
            return None
        finally:
            theirs.close()
        channel = _Channel(self._result, self._lost)
        channel.send(self.config)
        self._tasks.spawn(self._connect(ours, channel), name="shadow-worker-connect")
        self._channel = channel
        return channel

    async def _connect(self, sock: socket.socket, channel: _Channel) -> None:
        try:
            await asyncio.get_running_loop().create_unix_connection(lambda: channel, sock=sock)
        except Exception:
            LOGGER.exception("could not connect to the shadow worker")
            sock.close()
            if self._channel is channel:
                self._lost()

    def _result(self, message: tuple[Any, ...]) -> None:
        entry = self._jobs.pop(message[0], None)
        if entry is None:
            return
        job, finish = entry
        try:
            finish(job, _outcome_of(message))
        except Exception:  # a listener's bug must not cost the other jobs of this frame
            LOGGER.exception("recording a shadow outcome failed for %s", job.model)

    def _lost(self) -> None:
        self._channel = None
        jobs, self._jobs = self._jobs, {}
        process = self._process
        if not self._closed:
            code = None if process is None else process.poll()
            LOGGER.error(
                "shadow worker exited (code %s); %d shadow calls in flight recorded as errors",
                code,
                len(jobs),
            )
            if process is not None and code is None:
                process.kill()  # its socket is gone: it can do no more (reaped by `_reap`)
        for job, finish in jobs.values():
            finish(job, Outcome(EXITED))

    def _reap(self) -> None:
        """Collect the previous worker's exit status (it was killed or has exited)."""
        if self._process is not None:
            try:
                self._process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                LOGGER.error("shadow worker %d outlived its socket", self._process.pid)
            self._process = None

    async def aclose(self) -> None:
        """Close the socket pair; wait up to `STOP_S` for the worker to exit, then kill it
        by its PID. Jobs still in flight are recorded as shadow errors."""
        self._closed = True
        if self._channel is not None:
            self._channel.close()
        await self._tasks.aclose()
        process = self._process
        if process is None:
            return
        try:
            await asyncio.to_thread(process.wait, STOP_S)
        except subprocess.TimeoutExpired:
            LOGGER.error("shadow worker %d did not stop in %.0f s: killed", process.pid, STOP_S)
            process.kill()
            process.wait()
        self._process = None


def _spawn(fd: int) -> subprocess.Popen[bytes]:
    # The child imports this package from where the parent did, installed or not.
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (here, env.get("PYTHONPATH"))))
    return subprocess.Popen(
        [sys.executable, "-m", "proxy.shadowworker", str(fd)],
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        env=env,
    )


# --- the messages: flat tuples of plain values (module docstring) ------------------------


def _job_message(job_id: int, job: ShadowJob, keep_answers: bool) -> tuple[Any, ...]:
    request, reply = job.request, job.primary_reply
    assert request is not None  # `Shadow.submit` sends a worker only jobs with one
    ref = request.ref
    return (
        job_id,
        job.model,
        job.request_id,
        job.primary.value,
        job.shadow.value,
        reply.status,
        reply.body,
        reply.content_type,
        reply.headers,
        ref.name,
        ref.requested,
        ref.version,
        ref.endpoint,
        request.path,
        request.raw_path,
        request.query_string,
        request.client,
        request.incoming,
        request.body,
        # Bodies come back only where the mismatch record may keep them.
        keep_answers,
    )


def _job_of(message: tuple[Any, ...], upstreams: Upstreams) -> tuple[int, ShadowJob, bool]:
    # Imported here: the handlers import the runtime, which imports this module.
    from proxy.handlers import shadow_send

    (job_id, model, request_id, primary, shadow, status, body, content_type, headers) = message[:9]
    (name, requested, version, endpoint, path, raw_path, query, client, incoming) = message[9:18]
    request_body, keep_answers = message[18:]
    request = ShadowRequest(
        ModelRef(name, requested, version, endpoint),
        path,
        raw_path,
        query,
        client,
        incoming,
        request_body,
    )
    backend = Backend(shadow)
    job = ShadowJob(
        model,
        request_id,
        Backend(primary),
        backend,
        Reply(status, body, content_type, headers),
        partial(shadow_send, upstreams, request, backend, request_id),
    )
    return job_id, job, keep_answers


def _outcome_message(job_id: int, outcome: Outcome, keep_answers: bool) -> tuple[Any, ...]:
    result, call, answers = outcome.result, outcome.call, outcome.answers
    if result.verdict is Verdict.MATCH:
        return (job_id, call)
    flat = None
    if answers is not None and keep_answers:
        flat = (answers[0].status, answers[0].body, answers[1].status, answers[1].body)
    fields = (result.verdict.value, result.path, result.primary, result.shadow, result.detail)
    return (job_id, call, *fields, flat)


def _outcome_of(message: tuple[Any, ...]) -> Outcome:
    if len(message) == 2:
        return Outcome(MATCH, message[1])
    _, call, verdict, path, primary, shadow, detail, flat = message
    result = Comparison(Verdict(verdict), path, primary, shadow, detail)
    answers = None if flat is None else (Answer(flat[0], flat[1]), Answer(flat[2], flat[3]))
    return Outcome(result, call, answers)


# --- the worker process -----------------------------------------------------------------


class _Runner:
    """The worker's side: the first message is the config, every later one a job."""

    def __init__(self, *, configure_logs: bool) -> None:
        self.configure_logs = configure_logs
        self.channel: _Channel | None = None
        self.upstreams: Upstreams | None = None
        self.tolerances: dict[str, Tolerance] = {}
        self.tasks = TaskSet()

    def on_message(self, message: Any) -> None:
        if self.upstreams is None:
            self._configure(message)
            return
        try:
            job_id, job, keep_answers = _job_of(message, self.upstreams)
            name = f"shadow:{job.model}:{job.request_id}"
            self.tasks.spawn(self._run(job_id, job, keep_answers), name=name)
        except Exception as exc:  # answer anyway: the proxy holds a slot for this job
            LOGGER.exception("shadow job could not start")
            bug = Outcome(shadow_error(f"BUG {type(exc).__name__}"))
            assert self.channel is not None
            self.channel.send(_outcome_message(message[0], bug, False))

    def _configure(self, config: ProxyConfig) -> None:
        from proxy.runtime import Upstreams  # the runtime imports this module

        if self.configure_logs:
            configure_logging(config.logging.level)
        self.upstreams = Upstreams.build(config)
        self.tolerances = tolerances_of(config)

    async def _run(self, job_id: int, job: ShadowJob, keep_answers: bool) -> None:
        outcome = await mirror(job, self.tolerances)
        assert self.channel is not None
        self.channel.send(_outcome_message(job_id, outcome, keep_answers))

    async def aclose(self) -> None:
        await self.tasks.aclose()
        if self.upstreams is not None:
            await self.upstreams.aclose()


async def _serve(fd: int, *, configure_logs: bool = True) -> None:
    loop = asyncio.get_running_loop()
    closed: asyncio.Future[None] = loop.create_future()

    def on_closed() -> None:
        if not closed.done():
            closed.set_result(None)

    runner = _Runner(configure_logs=configure_logs)
    channel = runner.channel = _Channel(runner.on_message, on_closed)
    await loop.create_unix_connection(lambda: channel, sock=socket.socket(fileno=fd))
    await closed
    await runner.aclose()


def main(argv: Sequence[str]) -> int:
    """`python -m proxy.shadowworker FD`: serve jobs from the socket FD until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import uvloop

    uvloop.run(_serve(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
