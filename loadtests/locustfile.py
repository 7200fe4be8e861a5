"""Locust users for serving-proxy load tests: a fixed-arrival-rate sender and a closed loop.

Run it through `serving-proxy loadtest` (loadtests/cli.py), which passes the `--sp-*`
options below; locust sends them on to its workers in distributed runs.

Why not locust's usual users alone: a `User` sends its next request only after the previous
answer, so when the server stalls the users stop sending and the stall is under-sampled
(coordinated omission, locust#2347); `constant_throughput` paces a user but cannot catch
up. `FixedRateUser` instead owns a schedule: request *i* is due at its offset from the start
(loadtests/schedule.py), it is sent from its own greenlet when due whatever the others are
doing, and its latency counts **from the due time**, so a request held back by a stall
still shows the whole wait. Requests that go out late, or never, are counted.

Both kinds stop by themselves after `--sp-duration` and report to the master (or the local
runner); `RunShape` ends the test once every sender has reported and their statistics have
reached the master, so no in-flight request is cut off and nothing is dropped from the
figures. `--sp-summary` names the JSON file the master writes at the end.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
from gevent.pool import Pool
from locust import FastHttpUser, LoadTestShape, constant, constant_throughput, events, task
from locust.exception import StopTest, StopUser
from locust.runners import MasterRunner, WorkerRunner

from loadtests import mix, results, schedule

DONE_MESSAGE = "serving_proxy_sender_done"
# After the last sender reports, wait at most this long for its statistics to reach the
# master (workers report every 3 s) before ending the test anyway.
STATS_CATCH_UP_S = 15.0
# A run that overstays duration + request timeout + this is ended whatever the senders say.
OVERRUN_GRACE_S = 30.0
# Spawn every sender at once; locust warns above 100 a second per worker.
SPAWN_RATE = 100

logger = logging.getLogger("serving_proxy.loadtest")


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = parser.add_argument_group("serving-proxy", "set by `serving-proxy loadtest`")
    group.add_argument("--sp-mode", choices=["open", "closed"], default="open")
    group.add_argument("--sp-protocol", choices=list(mix.PROTOCOLS), default="legacy")
    group.add_argument("--sp-path", default="/invocations")
    group.add_argument("--sp-payloads", default=str(mix.SAMPLES_DIR / "iris.jsonl"))
    group.add_argument("--sp-rate", type=float, default=10.0)
    group.add_argument("--sp-duration", type=float, default=10.0)
    group.add_argument("--sp-ramp-steps", type=int, default=0)
    group.add_argument("--sp-ramp-s", type=float, default=0.0)
    group.add_argument("--sp-users", type=int, default=1, help="senders (open) or users (closed)")
    group.add_argument("--sp-late-ms", type=float, default=50.0)
    group.add_argument("--sp-max-in-flight", type=int, default=500)
    group.add_argument("--sp-timeout-s", type=float, default=30.0)
    group.add_argument("--sp-headers", default="{}", help="JSON object of extra headers")
    group.add_argument("--sp-token-env", default="", help="env var holding a bearer token")
    group.add_argument("--sp-summary", default="", help="JSON file the master writes")
    group.add_argument("--sp-label", default="")


@dataclass
class Progress:
    """What the senders reported, kept by the master (or the local runner)."""

    reports: list[dict[str, Any]] = field(default_factory=list)
    last_report_at: float | None = None


PROGRESS = Progress()


def _on_sender_done(environment: Any, msg: Any, **_: Any) -> None:
    PROGRESS.reports.append(dict(msg.data))
    PROGRESS.last_report_at = time.monotonic()


@events.init.add_listener
def on_init(environment: Any, **_: Any) -> None:
    if environment.runner is not None and not isinstance(environment.runner, WorkerRunner):
        environment.runner.register_message(DONE_MESSAGE, _on_sender_done)


def _headers(opts: Any, payload: mix.Payload) -> dict[str, str]:
    headers: dict[str, str] = dict(json.loads(opts.sp_headers or "{}"))
    if opts.sp_token_env:
        token = os.environ.get(opts.sp_token_env)
        if token:
            headers["Authorization"] = f"Bearer {token}"
    if payload.content_type is not None:
        headers["Content-Type"] = payload.content_type
    return headers


class _ServingUser(FastHttpUser):
    """What both kinds share: options, the payload mix, the report at the end."""

    abstract = True

    def __init__(self, environment: Any) -> None:
        opts = environment.parsed_options
        # FastHttpUser reads these in its __init__; instance values win over the class's.
        self.network_timeout = self.connection_timeout = float(opts.sp_timeout_s)
        self.concurrency = int(opts.sp_max_in_flight)
        super().__init__(environment)
        self.opts = opts
        try:
            self.mix = mix.Mix(mix.load(mix.resolve(opts.sp_payloads), opts.sp_protocol))
        except mix.PayloadError as exc:
            # StopTest ends the whole run at once instead of leaving it without senders.
            raise StopTest(str(exc)) from None
        self._scheduled = self._sent = self._completed = self._late = self._unsent = 0
        self._max_lag_s = 0.0
        self._reported = False
        # Wall-clock span of this sender's traffic, for the throughput figure.
        self._first_at: float | None = None

    def _post(
        self, payload: mix.Payload, due: float | None = None, due_wall: float | None = None
    ) -> None:
        with self.client.request(
            "POST",
            self.opts.sp_path,
            name=payload.id,
            data=payload.body,
            headers=_headers(self.opts, payload),
            catch_response=True,
        ) as response:
            if due is not None:
                # Open model: the latency a client that wanted to send at `due` sees.
                response.request_meta["response_time"] = (time.perf_counter() - due) * 1000
                response.request_meta["start_time"] = due_wall
        self._completed += 1

    def on_stop(self) -> None:
        if self._reported:
            return
        self._reported = True
        runner = self.environment.runner
        runner.send_message(
            DONE_MESSAGE,
            {
                "worker": getattr(runner, "worker_index", 0),
                "scheduled": self._scheduled,
                "sent": self._sent,
                "completed": self._completed,
                "late": self._late,
                "unsent": self._unsent,
                "max_lag_ms": self._max_lag_s * 1000,
                "first_at": self._first_at,
                "last_at": time.time(),
            },
        )


class FixedRateUser(_ServingUser):
    """One sender of the open model; `--sp-users` of them share the schedule (one a worker)."""

    wait_time = constant(0)

    def _share(self) -> tuple[int, int]:
        count = max(1, int(self.opts.sp_users))
        index = max(0, int(getattr(self.environment.runner, "worker_index", 0)))
        return index % count, count

    def _send(self, number: int, due: float, due_wall: float) -> None:
        lag = time.perf_counter() - due
        self._max_lag_s = max(self._max_lag_s, lag)
        if lag * 1000 > self.opts.sp_late_ms:
            self._late += 1
        self._post(self.mix.pick(number), due, due_wall)

    @task
    def keep_schedule(self) -> None:
        steps = schedule.plan(
            self.opts.sp_rate,
            self.opts.sp_duration,
            ramp_steps=self.opts.sp_ramp_steps,
            ramp_s=self.opts.sp_ramp_s,
        )
        window = sum(step.seconds for step in steps)
        late_s = self.opts.sp_late_ms / 1000
        index, count = self._share()
        pool = Pool(self.opts.sp_max_in_flight)
        start, start_wall = time.perf_counter(), time.time()
        self._first_at = start_wall
        end = start + window
        for number, offset in schedule.share(schedule.arrivals(steps), index, count):
            self._scheduled += 1
            due = start + offset
            wait = due - time.perf_counter()
            if wait > 0:
                gevent.sleep(wait)
            if pool.full():
                # Every place is taken: wait for one, but never past the end of the window.
                pool.wait_available(timeout=max(0.0, end - time.perf_counter()))
            if pool.full() or time.perf_counter() > end + late_s:
                self._unsent += 1
                continue
            self._sent += 1
            pool.spawn(self._send, number, due, start_wall + offset)
        # Every request sent is waited for: its latency is part of the result.
        pool.join()
        raise StopUser()


_USER_NUMBERS = itertools.count()


class ClosedLoopUser(_ServingUser):
    """Locust's usual closed loop, paced with `constant_throughput` to the same total rate.

    Here latency counts from the actual send, and a stalled user simply sends less: this is
    the comparison that shows what the open model adds.
    """

    def on_start(self) -> None:
        users = max(1, int(self.opts.sp_users))
        per_user = self.opts.sp_rate / users
        self._pace = constant_throughput(per_user) if per_user > 0 else constant(0)
        self._started = time.perf_counter()
        self._first_at = time.time()
        # Users of one process start at different points of the mix, workers too.
        worker = max(0, int(getattr(self.environment.runner, "worker_index", 0)))
        self._number = worker * 1_000_003 + next(_USER_NUMBERS) * 10_007

    def wait_time(self) -> float:
        return float(self._pace(self))

    @task
    def invoke(self) -> None:
        if time.perf_counter() - self._started >= self.opts.sp_duration:
            raise StopUser()
        self._number += 1
        self._sent += 1
        self._post(self.mix.pick(self._number))


class RunShape(LoadTestShape):
    """Starts the senders at once, and ends the test when all are done and counted."""

    def tick(self) -> tuple[int, float, list[type[_ServingUser]]] | None:
        assert self.runner is not None
        environment = self.runner.environment
        opts = environment.parsed_options
        users = max(1, int(opts.sp_users))
        user_class = FixedRateUser if opts.sp_mode == "open" else ClosedLoopUser
        if len(PROGRESS.reports) >= users and PROGRESS.last_report_at is not None:
            completed = sum(int(r["completed"]) for r in PROGRESS.reports)
            caught_up = environment.stats.total.num_requests >= completed
            if caught_up or time.monotonic() - PROGRESS.last_report_at > STATS_CATCH_UP_S:
                if not caught_up:
                    logger.warning("ending before every worker's statistics arrived")
                return None
        if self.get_run_time() > opts.sp_duration + opts.sp_timeout_s + OVERRUN_GRACE_S:
            logger.error("the senders did not finish in time; ending the run")
            return None
        return users, SPAWN_RATE, [user_class]


@events.quitting.add_listener
def write_summary(environment: Any, **_: Any) -> None:
    """The master (or local runner) writes the run's figures for the CLI to judge."""
    if isinstance(environment.runner, WorkerRunner):
        return
    opts = environment.parsed_options
    if not opts or not opts.sp_summary:
        return
    total = environment.stats.total
    # From the first sender's start to the last one's end: the spawn-up before and the
    # statistics catch-up after are not part of the load.
    firsts = [r["first_at"] for r in PROGRESS.reports if r.get("first_at")]
    lasts = [r["last_at"] for r in PROGRESS.reports if r.get("last_at")]
    if firsts and lasts:
        elapsed = max(lasts) - min(firsts)
    else:
        elapsed = (total.last_request_timestamp or total.start_time) - total.start_time
    counts: dict[str, Any] = {
        key: sum(r.get(key, 0) for r in PROGRESS.reports)
        for key in ("scheduled", "sent", "completed", "late", "unsent")
    }
    counts["max_lag_ms"] = max((r.get("max_lag_ms", 0.0) for r in PROGRESS.reports), default=0.0)
    counts["senders"] = len(PROGRESS.reports)
    summary = {
        "label": opts.sp_label,
        "mode": opts.sp_mode,
        "protocol": opts.sp_protocol,
        "target": f"{environment.host}{opts.sp_path}",
        "rate": opts.sp_rate,
        "duration_s": opts.sp_duration,
        "requests": total.num_requests,
        "failures": total.num_failures,
        "rps": total.num_requests / elapsed if elapsed > 0 else 0.0,
        "elapsed_s": elapsed,
        "avg_ms": total.avg_response_time,
        "percentiles_ms": {
            results.percentile_key(p): total.get_response_time_percentile(p)
            if total.num_requests
            else 0
            for p in results.PERCENTILES
        },
        "by_name": {
            name: {"requests": entry.num_requests, "failures": entry.num_failures}
            for (name, _method), entry in sorted(environment.stats.entries.items())
        },
        "errors": [
            {
                "name": e.name,
                "method": e.method,
                "error": str(e.error),
                "occurrences": e.occurrences,
            }
            for e in environment.stats.errors.values()
        ],
        "schedule": counts,
        # Distinct workers that ran senders; 0 for a local (single-process) run.
        "workers": len({r.get("worker") for r in PROGRESS.reports})
        if isinstance(environment.runner, MasterRunner)
        else 0,
    }
    Path(opts.sp_summary).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
