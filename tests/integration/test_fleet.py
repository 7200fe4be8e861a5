"""A fleet on loopback: redis-server, three replicas and nginx in front, under a locust load.

The fleet is `sim.fleet.Fleet`, what `scripts/fleet` runs. The load is the real
`python -m loadtests` (locust, fixed arrival rate) through nginx; nginx's access log is the
ground truth for which replica served what and when. Each test leaves every replica
running and the model paused at 0 %. Figures (propagation percentiles, failover time,
convergence) are printed; the only durations asserted are the issue's own bounds.

Checks that need a part of the fleet not built yet (the rollout leader, pushed changes,
the stale flag) are run when the replicas offer it and otherwise say so in the output.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from proxy.config import ConfigError, parse_config
from sim.fleet import REPLICA_NAMES, Fleet, Replica, missing, nginx_config, replica_config
from tests.integration.proxy_process import PROJECT_ROOT

pytestmark = [
    pytest.mark.fleet,
    pytest.mark.integration,
    pytest.mark.redis,
    pytest.mark.timeout(240),
    pytest.mark.skipif(find_spec("locust") is None, reason="needs the 'load' extra (locust)"),
]

TOKEN = "fleet-admin-token-0123456789abcdef0123"
AUTH = {"authorization": f"Bearer {TOKEN}"}
LEGACY_PATH = "/model/iris/1/invocations"
STEPS = [10, 20, 30]
MIN_SAMPLES = 300
SLOT_S = 1.0
LEADER_TTL_S = 3.0
RATE = 40
DEADLINE_S = 60.0
# A p99 of 50 samples is their maximum, so one stall of a shared machine anywhere in the
# 50 would decide it; of 100, it is the second largest.
PROPAGATION_CHANGES = 100

MODELS: dict[str, Any] = {
    "iris": {
        "serverless_percent": 0,
        "shadow_percent": 100,
        "rollout": {
            "steps": STEPS,
            "interval": "1s",
            "window": "60s",
            # Every request is shadowed and compared, so parity's samples are the requests
            # the fleet served since the step: the gate that counts them is the one tested.
            "gates": {"error_rate": None, "parity": {"min": 0.5, "min_samples": MIN_SAMPLES}},
        },
    }
}


def _extra_config() -> dict[str, Any]:
    extra: dict[str, Any] = {
        "reporting": {"slot": f"{SLOT_S:g}s", "window": "60s"},
        "shadow": {"isolation": "inline"},
    }
    if _supports({"cutover": {"leader_ttl_s": LEADER_TTL_S}}):
        extra["cutover"] = {"leader_ttl_s": LEADER_TTL_S}
    return extra


def _supports(extra: dict[str, Any]) -> bool:
    """Whether the proxy's own config loader takes these keys (a part not merged yet)."""
    doc = replica_config(
        replica_id="probe", port=1, redis_url="redis://127.0.0.1:1/0",
        legacy_url="http://127.0.0.1:2", serverless_url="http://127.0.0.1:3",
        models=MODELS, extra=extra,
    )  # fmt: skip
    try:
        parse_config(doc, {})
    except ConfigError:
        return False
    return True


# --- the fleet and its ground truth -----------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    why = missing()
    if why is not None:
        pytest.skip(f"{why}; scripts/test installs it as root with apt-get")
    workdir = tmp_path_factory.mktemp("fleet")
    env = {**os.environ, "SERVING_PROXY_ADMIN_TOKEN": TOKEN}
    with Fleet(workdir, models=MODELS, extra_config=_extra_config(), env=env) as running:
        yield running


@pytest.fixture(autouse=True)
def paused_at_zero(fleet: Fleet) -> Iterator[None]:
    """Every replica up, the model paused at 0 %, before and after each test."""
    _reset(fleet)
    yield
    _reset(fleet)


def _reset(fleet: Fleet) -> None:
    for name, replica in fleet.replicas.items():
        if replica.pid is None:
            fleet.start_replica(name)
        if not replica.in_service:
            fleet.set_in_service(name, True)
    if fleet.redis_pid is None:
        fleet.start_redis()
    a = fleet.replicas[REPLICA_NAMES[0]]
    _admin(a, "POST", "/admin/models/iris/pause", {"reason": "test set-up"})
    _admin(a, "PUT", "/admin/models/iris", {"serverless_percent": 0, "reason": "test set-up"})
    _until(lambda: all(_view(r)["serverless_percent"] == 0 for r in fleet.replicas.values()))


@dataclass(frozen=True)
class Served:
    """One line of nginx's access log."""

    end: float
    status: int
    seconds: float
    request: str
    upstreams: tuple[str, ...]

    @property
    def start(self) -> float:
        return self.end - self.seconds


def served(fleet: Fleet, since: float = 0.0) -> list[Served]:
    """nginx's access log (`sim.fleet.nginx_config`'s `fleet` format), scoring calls only."""
    out = []
    for line in (fleet.nginx_prefix / "access.log").read_text().splitlines():
        head, request, _, addresses, *_ = line.split('"')
        end, status, seconds = head.split()
        upstreams = tuple(a.strip() for a in addresses.split(","))
        entry = Served(float(end), int(status), float(seconds), request, upstreams)
        if LEGACY_PATH in request and entry.start >= since:
            out.append(entry)
    return out


def port_of(replica: Replica) -> str:
    return f"127.0.0.1:{replica.port}"


# --- the admin API and the load ---------------------------------------------------------------


def _admin(
    replica: Replica, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = httpx.request(method, replica.url + path, headers=AUTH, json=body, timeout=10)
    assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
    data: dict[str, Any] = response.json()
    return data


def _view(replica: Replica, client: httpx.Client | None = None) -> dict[str, Any]:
    get = httpx.get if client is None else client.get
    response = get(replica.url + "/admin/models/iris", headers=AUTH, timeout=10)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def _optional(replica: Replica, path: str) -> dict[str, Any] | None:
    """An admin endpoint that may not exist yet: None when it answers 404."""
    response = httpx.get(replica.url + path, headers=AUTH, timeout=5)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def _until(done: Callable[[], bool], deadline_s: float = DEADLINE_S, every: float = 0.05) -> float:
    """Poll `done` until true; the seconds it took. Fails the test at the deadline."""
    started = time.monotonic()
    while not done():
        assert time.monotonic() - started < deadline_s, f"not done within {deadline_s} s"
        time.sleep(every)
    return time.monotonic() - started


def steps_since(replica: Replica, since: float) -> list[dict[str, Any]]:
    """The rollout's own moves of iris in the audit log since `since`, oldest first."""
    audit = _admin(replica, "GET", "/admin/audit?limit=1000")["audit"]
    mine = [e for e in audit if e["model"] == "iris" and e["at"] >= since]
    return sorted((e for e in mine if e["actor"] == "rollout"), key=lambda e: e["at"])


def step_weights(entries: list[dict[str, Any]]) -> list[float]:
    return [e["new"]["serverless_percent"] for e in entries if e["action"] == "advance"]


class Load:
    """A fixed-rate locust run through nginx in the background (`python -m loadtests`)."""

    def __init__(self, fleet: Fleet, report_dir: Path, *, duration_s: int) -> None:
        self.report_dir = report_dir
        self.duration_s = duration_s
        self.started = time.time()
        command = [
            sys.executable, "-m", "loadtests", "--host", fleet.url, "--path", LEGACY_PATH,
            "--protocol", "legacy", "--rate", str(RATE), "--duration", str(duration_s),
            "--timeout-s", "10", "--report-dir", str(report_dir),
        ]  # fmt: skip
        self._log = (report_dir / "cli.log").open("wb")
        self.process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )
        # Locust takes a few seconds to start: the run begins with its first request.
        _until(lambda: len(served(fleet, self.started)) > 0, deadline_s=30)

    def finish(self) -> dict[str, Any]:
        """Wait for the run's end (bounded); its summary."""
        try:
            self.process.wait(self.duration_s + 60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log.close()
        summary: dict[str, Any] = json.loads((self.report_dir / "summary.json").read_text())
        return summary


def _pubsub_subscribers(fleet: Fleet) -> int:
    """How many replicas listen on a Redis channel: pushed changes are in, or not."""
    client = redis.Redis.from_url(fleet.redis_url)
    try:
        channels = client.pubsub_channels()
        counts = client.pubsub_numsub(*channels) if channels else []
        return sum(int(n) for _, n in counts)
    finally:
        client.close()


# --- the checks -------------------------------------------------------------------------------


def test_the_fleet_serves_through_nginx_and_every_replica_answers(fleet: Fleet) -> None:
    with httpx.Client(base_url=fleet.url, trust_env=False) as client:
        ids = {client.get("/readyz").json()["replica_id"] for _ in range(9)}
        body = b'{"columns": ["a", "b"], "data": [[1, 2.5]]}'
        headers = {"content-type": "application/json; format=pandas-split"}
        answers = [client.post(LEGACY_PATH, content=body, headers=headers) for _ in range(6)]
    # nginx spreads the requests over all three replicas, each named by its replica_id.
    assert ids == set(REPLICA_NAMES)
    assert [a.status_code for a in answers] == [200] * 6
    assert nginx_config(Path("/p"), 1, {2: True, 3: False}).count(" down;") == 1


def test_a_change_through_one_replica_is_in_force_on_the_others(fleet: Fleet) -> None:
    a, b, c = (fleet.replicas[name] for name in REPLICA_NAMES)
    lags: list[float] = []
    # Changes at random moments: made right after the previous one was seen, each would
    # land at the same phase of the replicas' polling and measure only that phase.
    pauses = random.Random(15)
    # What the watching costs must not be counted as propagation: one client per watched
    # replica made before the clock runs (making an httpx.Client loads the CA bundle),
    # watchers started before the change, and no collection of this process's garbage
    # meanwhile (a full collection of a long pytest session's heap is a pause of its own).
    gc.collect()
    gc.disable()
    try:
        with contextlib.ExitStack() as clients:
            client, own_b, own_c = (
                clients.enter_context(httpx.Client(headers=AUTH, timeout=10, trust_env=False))
                for _ in range(3)
            )
            own = {b.replica_id: own_b, c.replica_id: own_c}
            for i in range(PROPAGATION_CHANGES):
                percent = 1 + i % 40  # differs from the previous value every time
                seen: dict[str, float] = {}
                time.sleep(pauses.uniform(0, 0.3))

                def watch(
                    replica: Replica, percent: float = percent, seen: dict[str, float] = seen
                ) -> None:
                    view = own[replica.replica_id]
                    deadline = time.perf_counter() + 10
                    while time.perf_counter() < deadline:
                        if _view(replica, view)["serverless_percent"] == percent:
                            seen[replica.replica_id] = time.perf_counter()
                            return
                        time.sleep(0.001)

                watchers = [threading.Thread(target=watch, args=(r,)) for r in (b, c)]
                for w in watchers:
                    w.start()
                reply = client.put(
                    a.url + "/admin/models/iris",
                    json={"serverless_percent": percent, "reason": f"propagation {i}"},
                )
                answered = time.perf_counter()
                assert reply.status_code == 200, reply.text
                for w in watchers:
                    w.join(11)
                assert set(seen) == {b.replica_id, c.replica_id}, f"change {i} not seen everywhere"
                # Seen before A answered (A reads its window after the write) counts as 0.
                lags.append(max(0.0, max(seen.values()) - answered))
    finally:
        gc.enable()
    ms = sorted(lag * 1000 for lag in lags)
    p50, p99 = statistics.median(ms), ms[min(len(ms) - 1, round(0.99 * len(ms)) - 1)]
    print(
        f"\npropagation over {len(ms)} changes: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {ms[-1]:.1f} ms; the slowest five {[round(m, 1) for m in ms[-5:]]}"
    )
    if _pubsub_subscribers(fleet) >= len(REPLICA_NAMES):
        assert p99 < 100, f"pushed changes: p99 {p99:.1f} ms over {len(ms)} changes"
    else:
        print("propagation: the replicas do not subscribe to Redis pub/sub yet (polling only):")
        print("             the 100 ms p99 bound is not asserted, only the 1 s polling one")
        assert p99 < 1000


def test_a_rollout_advances_on_the_fleets_samples_each_step_audited_once(
    fleet: Fleet, tmp_path: Path
) -> None:
    a, b, _ = (fleet.replicas[name] for name in REPLICA_NAMES)
    load = Load(fleet, tmp_path, duration_s=40)
    since = time.time()
    _admin(b, "POST", "/admin/models/iris/resume", {"reason": "fleet rollout"})
    _until(lambda: step_weights(steps_since(a, since)) == STEPS, deadline_s=45, every=0.2)
    # Each replica's part of the fleet window, once its first slot at the last step closed.
    _until(lambda: set(_view(a)["window"]["replicas"]) == set(REPLICA_NAMES), deadline_s=10)
    summary = load.finish()
    entries = [e for e in steps_since(a, since) if e["action"] == "advance"]
    assert step_weights(entries) == STEPS  # each step once, none skipped
    assert summary["failures"] == 0
    # Between two steps the fleet served at least min_samples requests, and no replica
    # alone did: the gate counted the fleet's, not its own replica's.
    log = served(fleet, since)
    bounds = [since, *(e["at"] for e in entries)]
    for (start, end), weight in zip(itertools.pairwise(bounds), STEPS, strict=True):
        window = [s for s in log if start <= s.start and s.end <= end]
        per_replica = {
            r.replica_id: sum(port_of(r) in s.upstreams for s in window)
            for r in fleet.replicas.values()
        }
        print(f"step to {weight}%: {len(window)} requests since the last step, {per_replica}")
        assert len(window) >= MIN_SAMPLES * 0.95
        assert max(per_replica.values()) < MIN_SAMPLES


def test_kill_9_of_the_leader_mid_rollout(fleet: Fleet, tmp_path: Path) -> None:
    a, b, c = (fleet.replicas[name] for name in REPLICA_NAMES)
    load = Load(fleet, tmp_path, duration_s=40)
    since = time.time()
    _admin(b, "POST", "/admin/models/iris/resume", {"reason": "fleet rollout, leader dies"})
    _until(lambda: step_weights(steps_since(b, since)) == STEPS[:1], deadline_s=30, every=0.1)
    leader = _optional(b, "/admin/leader")
    victim = fleet.replicas[leader["replica_id"]] if leader else a
    survivors = [r for r in (a, b, c) if r is not victim]
    fleet.kill_replica(victim.replica_id)  # returns once the process is gone
    killed_at = time.time()
    failover: float | None = None
    if leader is not None:
        failover = _until(
            lambda: (
                (_optional(survivors[0], "/admin/leader") or {}).get("replica_id")
                in {r.replica_id for r in survivors}
            ),
            deadline_s=LEADER_TTL_S + 10,
        )
    _until(
        lambda: step_weights(steps_since(survivors[0], since)) == STEPS, deadline_s=45, every=0.2
    )
    summary = load.finish()
    entries = steps_since(survivors[0], since)
    assert step_weights(entries) == STEPS  # no step twice, none skipped
    # Each step names the leader that took it and its lease's token; a token never goes
    # back, and the steps after the kill came from a survivor under a newer lease.
    steps = [e for e in entries if e["action"] == "advance"]
    tokens = [e["fencing_token"] for e in steps]
    assert all(isinstance(t, int) for t in tokens), steps
    assert tokens == sorted(tokens), steps
    assert {e["replica"] for e in steps} <= set(fleet.replicas), steps
    after_kill = [e for e in steps if e["at"] > killed_at]
    assert all(e["replica"] != victim.replica_id for e in after_kill), steps
    if leader is not None and after_kill:
        assert after_kill[0]["fencing_token"] > leader["fencing_token"], steps
    # The only failures are requests the killed replica held when it died: nginx handed
    # every later one, refused, to another replica.
    failed = [s for s in served(fleet, load.started) if s.status >= 400]
    assert all(port_of(victim) in s.upstreams[-1] and s.start <= killed_at for s in failed), (
        f"killed {port_of(victim)} at {killed_at:.3f}: {failed}"
    )
    assert summary["failures"] == len(failed)
    print(
        f"\nkill -9 of {victim.replica_id} (leader: {leader is not None}): "
        f"{len(failed)} failed of {summary['requests']} (in flight on it)"
    )
    if failover is None:
        print("leader: GET /admin/leader is not there yet; failover time not measured")
    else:
        print(f"leader: another replica leads {failover:.2f} s after the kill")
        assert failover <= LEADER_TTL_S + 2


def test_a_rolling_restart_under_load_loses_nothing(fleet: Fleet, tmp_path: Path) -> None:
    """Each replica in turn: out of nginx (a graceful reload, as a Kubernetes endpoint
    removal), SIGTERM, started again, ready, back in."""
    load = Load(fleet, tmp_path, duration_s=30)
    before = {name: r.pid for name, r in fleet.replicas.items()}
    for name in REPLICA_NAMES:
        fleet.restart_replica(name)
    # Still under load after the last restart: it serves too.
    time.sleep(1)
    restarted_at = time.time()
    summary = load.finish()
    after = {name: r.pid for name, r in fleet.replicas.items()}
    log = served(fleet, load.started)
    print(f"\nrolling restart: {summary['failures']} failed of {summary['requests']}")
    assert all(before[name] != after[name] for name in REPLICA_NAMES)
    assert summary["failures"] == 0
    assert [s for s in log if s.status >= 400] == []
    later = {u for s in log if s.start > restarted_at for u in s.upstreams}
    assert later == {port_of(r) for r in fleet.replicas.values()}


def test_redis_restarted_under_load(fleet: Fleet, tmp_path: Path) -> None:
    a, b, c = (fleet.replicas[name] for name in REPLICA_NAMES)
    audit_before = _admin(a, "GET", "/admin/audit?limit=1000")["audit"]
    load = Load(fleet, tmp_path, duration_s=20)
    time.sleep(1)
    fleet.stop_redis()
    offered = _optional(a, "/admin/replicas") is not None
    if offered:
        _until(lambda: all(_stale(r) for r in (a, b, c)), deadline_s=15, every=0.2)
    # While the store is out a rollback still takes effect here, and is written later.
    reply = httpx.post(
        b.url + "/admin/models/iris/rollback", headers=AUTH, json={"reason": "during the outage"}
    )
    assert reply.status_code == 202
    assert reply.json()["persisted"] is False
    assert all(httpx.get(r.url + "/readyz").status_code == 200 for r in (a, b, c))
    time.sleep(2)
    fleet.start_redis()
    back = time.monotonic()

    def converged() -> bool:
        views = [_view(r) for r in (a, b, c)]
        audit = _admin(a, "GET", "/admin/audit?limit=1000")["audit"]
        fresh = not offered or not any(_stale(r) for r in (a, b, c))
        return (
            fresh
            and all(v["persisted"] is not False for v in views)
            and all(v["rollout"]["status"] == "rolled_back" for v in views)
            and any(e["reason"] == "during the outage" for e in audit)
        )

    _until(converged, deadline_s=20, every=0.1)
    took = time.monotonic() - back
    summary = load.finish()
    audit_after = _admin(a, "GET", "/admin/audit?limit=1000")["audit"]
    print(
        f"\nredis restart: converged {took:.2f} s after Redis returned; "
        f"{summary['failures']} failed of {summary['requests']}; stale flag: "
        f"{'seen on every replica' if offered else 'GET /admin/replicas not there yet'}"
    )
    assert took < 5
    assert summary["failures"] == 0
    # Nothing written before the outage is lost, and the rollback made during it is there.
    key = lambda e: (e["at"], e["action"], e["reason"])  # noqa: E731
    assert {key(e) for e in audit_before} <= {key(e) for e in audit_after}
    assert len(audit_after) == len(audit_before) + 1


def _stale(replica: Replica) -> bool:
    """What the replica says of itself in `GET /admin/replicas`."""
    rows = (_optional(replica, "/admin/replicas") or {}).get("replicas", [])
    mine = [row for row in rows if row.get("replica_id") == replica.replica_id]
    return bool(mine and mine[0].get("stale"))


def test_status_on_any_replica_shows_the_same_fleet_window(fleet: Fleet) -> None:
    with httpx.Client(base_url=fleet.url, trust_env=False) as client:
        body = b'{"columns": ["a", "b"], "data": [[1, 2.5]]}'
        headers = {"content-type": "application/json; format=pandas-split"}
        for _ in range(60):
            assert client.post(LEGACY_PATH, content=body, headers=headers).status_code == 200
    time.sleep(2 * SLOT_S + 0.5)  # every replica's last slot closed, published and read

    def status(replica: Replica) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "status", "iris", "--json", "--url", replica.url],
            cwd=PROJECT_ROOT,
            env={**os.environ, "SERVING_PROXY_ADMIN_TOKEN": TOKEN},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    windows = [status(r) for r in fleet.replicas.values()]
    merged = [
        {k: v for k, v in _window_of(w).items() if k.endswith(("_calls", "_samples"))}
        for w in windows
    ]
    print(f"\nstatus windows: {merged}")
    assert merged[0]["legacy_calls"] >= 60
    assert merged[0] == merged[1] == merged[2]
    # The migration report too covers the fleet on any replica: its shadow comparisons
    # since each replica started (untouched by the window's edge) add up every replica's.
    reports = [_admin(r, "GET", "/admin/report") for r in fleet.replicas.values()]
    compared = [sum(d["models"]["iris"]["parity"]["total"].values()) for d in reports]
    print(f"report: shadow results since start {compared}")
    assert [(d["replicas"], d["replicas_reachable"]) for d in reports] == [(3, True)] * 3
    assert compared[0] >= 60
    assert compared[0] == compared[1] == compared[2]


def _window_of(status: dict[str, Any]) -> dict[str, Any]:
    model = status["models"][0] if "models" in status else status
    window: dict[str, Any] = model["window"]
    return window
