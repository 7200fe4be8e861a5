"""The proxy's side of the shadow worker: a process of its own that makes the shadow calls
and compares the answers (`shadow.isolation: process`, the default).

Why a process. One event loop answers every client of a proxy process, and a shadow call
costs that loop about what the primary request does: one more upstream exchange, the
translation both ways and the comparison, which for a large answer that is not byte-equal
takes tens of milliseconds. Run there, mirroring takes throughput from the clients and
its comparisons stall their answers (`benchmarks/routing.py` prints the figures). In a
worker the same `mirror()` runs on another core, and the proxy's loop only hands over
the job and books the outcome.

The proxy side starts the worker (`shadow.process`) on the first job, sends it the
config, then `(id, ShadowJob, keep_answers)` messages over a `Channel`; the worker
answers each with `(id, Outcome)`, and `Shadow` keeps the tally and listeners as for
inline jobs.

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
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from proxy.compare import shadow_error
from proxy.config import ProxyConfig
from proxy.shadow.channel import Channel
from proxy.shadow.job import Outcome, ShadowJob
from proxy.shadow.runner import Finish
from proxy.tasks import TaskSet

LOGGER = logging.getLogger("serving_proxy.shadow")
# At most one worker start per this many seconds (module docstring).
RESTART_S = 1.0
# How long shutdown waits for the worker to exit after closing its socket, then kills it.
STOP_S = 5.0
UNAVAILABLE = shadow_error("shadow worker unavailable")
EXITED = shadow_error("shadow worker exited")


class ShadowWorker:
    """The proxy's side: starts the worker process, hands it jobs, books what comes back.

    A `shadow.Worker`. Every job submitted gets its `finish` called exactly once: with
    the worker's outcome, or with a shadow error if the worker is unavailable or exits
    first. Shadow calls in the worker use the client `server.upstream_client` names.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: Channel | None = None
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
        channel.send((job_id, job, self.config.shadow.keep_payloads))
        self._jobs[job_id] = (job, finish)

    def _start(self) -> Channel | None:
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
        channel = Channel(self._result, self._lost)
        channel.send(self.config)
        self._tasks.spawn(self._connect(ours, channel), name="shadow-worker-connect")
        self._channel = channel
        return channel

    async def _connect(self, sock: socket.socket, channel: Channel) -> None:
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
            finish(job, message[1])
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
        [sys.executable, "-m", "proxy.shadow.process", str(fd)],
        pass_fds=(fd,),
        stdin=subprocess.DEVNULL,
        env=env,
    )
