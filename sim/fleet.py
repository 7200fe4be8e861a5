"""A fleet on one machine: redis-server, proxy replicas and nginx in front, on loopback.

`python -m sim fleet` (and `scripts/fleet`) start, each as a child process on a free
loopback port: a redis-server of their own (its files in the run's temporary directory),
a legacy and a serverless simulator, N replicas of `python -m proxy serve` sharing the
cutover state through that Redis (each with its own `server.replica_id`), and nginx as
the load balancer in front of the replicas. The fleet tests drive the same `Fleet`.

nginx is told to retry a request on another replica only when it could not be handed to
the first one (`proxy_next_upstream error timeout`, no `non_idempotent`): a scoring
request that a replica may have processed is never sent twice, so a replica killed
mid-request fails the requests it held, and nothing else. A rolling restart loses nothing
because `restart_replica` first takes the replica out of nginx (a graceful reload, as a
Kubernetes endpoint removal and `preStop` pause do), waits for nginx's old workers to hand
back their connections, and only then sends SIGTERM, which drains what is left.
Every child is stopped by its own PID.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import yaml

from proxy.config import ADMIN_TOKEN_ENV
from sim.children import Child, free_ports, wait_ready
from sim.corpus import PROJECT_ROOT

REPLICA_NAMES: Final = ("replica-a", "replica-b", "replica-c")
LOOPBACK: Final = "127.0.0.1"
START_TIMEOUT_S: Final = 30.0
NGINX_WORKERS: Final = 1
NGINX_KEEPALIVE: Final = 32
# Under the replicas' own keep-alive timeout (uvicorn's 5 s): nginx closes an idle
# connection first, so it never sends a request down one the replica is closing.
NGINX_KEEPALIVE_TIMEOUT_S: Final = 4
RELOAD_TIMEOUT_S: Final = 10.0
REDIS_MISSING: Final = "redis-server is not installed (Debian package redis-server)"
NGINX_MISSING: Final = "nginx is not installed (Debian package nginx)"


class FleetError(RuntimeError):
    """The fleet could not be started or changed as asked."""


def default_models() -> dict[str, Any]:
    """What `scripts/fleet` serves: iris at 0 % with a rollout a user can watch advance."""
    return {
        "iris": {
            "serverless_percent": 0,
            "shadow_percent": 100,
            "rollout": {
                "steps": [5, 25, 50, 100],
                "interval": "20s",
                "gates": {
                    "error_rate": {"max": 0.02, "min_samples": 100},
                    "parity": {"min": 0.99, "min_samples": 100},
                },
            },
        }
    }


def replica_config(
    *,
    replica_id: str,
    port: int,
    redis_url: str,
    legacy_url: str,
    serverless_url: str,
    models: Mapping[str, Any],
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """One replica's proxy.yaml: the shared parts, its own id and port, then `extra` on top."""
    doc: dict[str, Any] = {
        "listen": {"host": LOOPBACK, "port": port},
        "backends": {"legacy": {"url": legacy_url}, "serverless": {"url": serverless_url}},
        "models": dict(models),
        "state": redis_url,
        # Behind nginx every client arrives from 127.0.0.1: with no key, each request is
        # routed on its own, so a weight is a share of requests here.
        "client_key": {"address": False},
        "server": {"replica_id": replica_id, "trusted_proxies": [LOOPBACK]},
        "admin": {"token_name": "fleet"},
        "logging": {"access_log": False},
    }
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return doc


def nginx_config(prefix: Path, listen_port: int, upstreams: Mapping[int, bool]) -> str:
    """nginx.conf for the load balancer: `upstreams` maps a replica's port to in-service."""
    # max_fails=0: a replica is never marked unavailable for a refused connection (which
    # nginx hands to the next one at no cost on loopback), so replicas restarted in turn
    # can never leave nginx with "no live upstreams".
    servers = "\n".join(
        f"        server {LOOPBACK}:{port} max_fails=0{'' if up else ' down'};"
        for port, up in upstreams.items()
    )
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
daemon off;
worker_processes {NGINX_WORKERS};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
{temp}
    log_format fleet '$msec $status $request_time "$request" "$upstream_addr" "$upstream_status"';
    access_log {prefix / "access.log"} fleet;
    upstream replicas {{
{servers}
        keepalive {NGINX_KEEPALIVE};
        keepalive_timeout {NGINX_KEEPALIVE_TIMEOUT_S}s;
    }}
    server {{
        listen {LOOPBACK}:{listen_port};
        client_max_body_size 16m;
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # Only what never reached a replica goes to another: a request a replica may
            # have processed is not replayed (no non_idempotent).
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 1s;
            proxy_read_timeout 60s;
            proxy_request_buffering on;
        }}
    }}
}}
"""


def _binary(name: str) -> str | None:
    """Where a system binary is; /usr/sbin too, which a non-root PATH often lacks."""
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"
    return found


def missing() -> str | None:
    """Why a fleet cannot start here (a system binary is not installed), or None."""
    for name, why in (("redis-server", REDIS_MISSING), ("nginx", NGINX_MISSING)):
        if _binary(name) is None:
            return why
    return None


def _pong(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _children_of(pid: int) -> set[int]:
    """The PIDs of a process's children (Linux /proc); empty where it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(word) for word in text.split()}


@dataclass
class Replica:
    """One proxy replica: its id, port, config file and the running child (if any)."""

    replica_id: str
    port: int
    config_path: Path
    log_path: Path
    child: Child | None = None
    in_service: bool = True

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.child is None or self.child.exited() else self.child.pid


@dataclass
class Fleet:
    """redis-server, two simulators, replicas and nginx, all on loopback under `workdir`.

    `start()` brings everything up and waits until each answers; `stop()` stops each child
    by its PID, nginx first. The caller gives the admin token in the environment it passes.
    """

    workdir: Path
    models: Mapping[str, Any] = field(default_factory=default_models)
    extra_config: Mapping[str, Any] = field(default_factory=dict)
    replica_names: Sequence[str] = REPLICA_NAMES
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    replicas: dict[str, Replica] = field(default_factory=dict)
    _children: list[Child] = field(default_factory=list)
    _redis: Child | None = None
    _nginx: Child | None = None

    def __post_init__(self) -> None:
        ports = free_ports(4 + len(self.replica_names))
        self.redis_port, self.legacy_port, self.serverless_port, self.nginx_port = ports[:4]
        self.redis_url = f"redis://{LOOPBACK}:{self.redis_port}/0"
        self.legacy_url = f"http://{LOOPBACK}:{self.legacy_port}"
        self.serverless_url = f"http://{LOOPBACK}:{self.serverless_port}"
        self.url = f"http://{LOOPBACK}:{self.nginx_port}"
        self.nginx_prefix = self.workdir / "nginx"
        self.redis_dir = self.workdir / "redis"
        for name, port in zip(self.replica_names, ports[4:], strict=True):
            self.replicas[name] = Replica(
                name, port, self.workdir / f"{name}.yaml", self.workdir / f"{name}.log"
            )

    # --- start and stop -----------------------------------------------------------------

    def start(self) -> None:
        """Start every part and wait until each answers.

        Raises:
            FleetError: a binary is missing or a part did not come up; what did start is
                stopped again.
        """
        why = missing()
        if why is not None:
            raise FleetError(why)
        try:
            self.start_redis()
            self._start_simulators()
            for replica in self.replicas.values():
                replica.config_path.write_text(
                    yaml.safe_dump(self._replica_doc(replica), sort_keys=False)
                )
                self.start_replica(replica.replica_id)
            self._start_nginx()
        except (FleetError, OSError):
            self.stop()
            raise

    def stop(self) -> None:
        """Stop nginx, the replicas, the simulators and redis-server, each by its PID."""
        if self._nginx is not None:
            self._nginx.stop()
            self._nginx = None
        for replica in self.replicas.values():
            if replica.child is not None:
                replica.child.stop()
                replica.child = None
        for child in reversed(self._children):
            child.stop()
        self._children.clear()
        self.stop_redis()

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- redis-server ---------------------------------------------------------------------

    def start_redis(self) -> None:
        """Start redis-server (again) on its port, with its data kept in its own directory."""
        self.redis_dir.mkdir(exist_ok=True)
        binary = _binary("redis-server") or "redis-server"
        command = [
            binary, "--port", str(self.redis_port), "--bind", LOOPBACK,
            "--dir", str(self.redis_dir), "--daemonize", "no", "--save", "",
            # Every write on disk before its reply: a restart finds the last one.
            "--appendonly", "yes", "--appendfsync", "always",
        ]  # fmt: skip
        child = Child("redis-server", command, self.workdir / "redis.log", self.workdir)
        self._redis = child
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _pong(self.redis_port):
            if child.exited():
                raise FleetError(f"redis-server exited during start-up:\n{child.log_tail()}")
            if time.monotonic() > deadline:
                raise FleetError(f"redis-server not up on port {self.redis_port}")
            time.sleep(0.02)

    def stop_redis(self) -> None:
        if self._redis is not None:
            self._redis.stop()
            self._redis = None

    @property
    def redis_pid(self) -> int | None:
        return None if self._redis is None else self._redis.pid

    # --- simulators -----------------------------------------------------------------------

    def _start_simulators(self) -> None:
        python = sys.executable
        with httpx.Client(trust_env=False) as client:
            for kind, port in (("legacy", self.legacy_port), ("serverless", self.serverless_port)):
                command = [python, "-m", "sim", "simulate", "--kind", kind, "--port", str(port)]
                child = Child(f"{kind}-simulator", command, self.workdir / f"{kind}.log",
                              PROJECT_ROOT)  # fmt: skip
                self._children.append(child)
                self._wait(client, child, f"http://{LOOPBACK}:{port}/ping")

    # --- replicas -------------------------------------------------------------------------

    def _replica_doc(self, replica: Replica) -> dict[str, Any]:
        return replica_config(
            replica_id=replica.replica_id,
            port=replica.port,
            redis_url=self.redis_url,
            legacy_url=self.legacy_url,
            serverless_url=self.serverless_url,
            models=self.models,
            extra=self.extra_config,
        )

    def start_replica(self, name: str) -> Replica:
        """Start (or start again) one replica and wait for its /readyz."""
        replica = self.replicas[name]
        if replica.pid is not None:
            raise FleetError(f"{name} is already running (pid {replica.pid})")
        command = [sys.executable, "-m", "proxy", "serve", "--config", str(replica.config_path)]
        child = Child(name, command, replica.log_path, PROJECT_ROOT, self.env)
        replica.child = child
        with httpx.Client(trust_env=False) as client:
            self._wait(client, child, replica.url + "/readyz")
        return replica

    def kill_replica(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to one replica (by its PID) and wait for it to exit."""
        replica = self.replicas[name]
        if replica.child is None:
            return
        replica.child.process.send_signal(sig)
        replica.child.process.wait(START_TIMEOUT_S)
        replica.child.stop()
        replica.child = None

    def restart_replica(self, name: str) -> None:
        """Restart one replica losing nothing: out of nginx, SIGTERM, start, back in."""
        self.set_in_service(name, False)
        self.kill_replica(name, signal.SIGTERM)
        self.start_replica(name)
        self.set_in_service(name, True)

    # --- nginx ----------------------------------------------------------------------------

    def _write_nginx_config(self) -> Path:
        path = self.nginx_prefix / "nginx.conf"
        upstreams = {r.port: r.in_service for r in self.replicas.values()}
        path.write_text(nginx_config(self.nginx_prefix, self.nginx_port, upstreams))
        return path

    def _start_nginx(self) -> None:
        self.nginx_prefix.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            # Run as root, nginx's workers drop to `nobody`: they must reach their files.
            for path in (self.workdir, self.nginx_prefix):
                path.chmod(0o711)
        conf = self._write_nginx_config()
        binary = _binary("nginx") or "nginx"
        command = [binary, "-p", str(self.nginx_prefix), "-c", str(conf)]
        self._nginx = Child("nginx", command, self.workdir / "nginx.log", self.workdir)
        with httpx.Client(trust_env=False) as client:
            self._wait(client, self._nginx, self.url + "/readyz")

    @property
    def nginx_pid(self) -> int | None:
        return None if self._nginx is None else self._nginx.pid

    def set_in_service(self, name: str, up: bool) -> None:
        """Put a replica in or out of nginx's upstream, by a graceful reload (SIGHUP).

        Returns once nginx's old workers have exited: by then no connection of theirs to
        the replica is open, so a replica taken out can be stopped without a client seeing
        it.
        """
        self.replicas[name].in_service = up
        self._write_nginx_config()
        if self._nginx is None:
            return
        master = self._nginx.pid
        before = _children_of(master)
        os.kill(master, signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT_S
        while time.monotonic() < deadline:
            now = _children_of(master)
            # New workers started and every old one has exited.
            if now and not now & before and len(now) >= NGINX_WORKERS:
                return
            time.sleep(0.02)
        raise FleetError(f"nginx did not finish its reload within {RELOAD_TIMEOUT_S} s")

    # --- helpers --------------------------------------------------------------------------

    def _wait(self, client: httpx.Client, child: Child, url: str) -> None:
        try:
            wait_ready(client, child, url, time.monotonic() + START_TIMEOUT_S)
        except RuntimeError as exc:
            raise FleetError(f"{exc}; its log ends:\n{child.log_tail()}") from exc

    def describe(self) -> list[str]:
        """What is running where, one line each."""
        lines = [
            f"redis-server          {self.redis_url}  (pid {self.redis_pid})",
            f"legacy simulator      {self.legacy_url}",
            f"serverless simulator  {self.serverless_url}",
        ]
        for replica in self.replicas.values():
            lines.append(f"{replica.replica_id:<21} {replica.url}  (pid {replica.pid})")
        lines.append(f"nginx (the fleet)     {self.url}  (pid {self.nginx_pid})")
        return lines


def admin_token_hint(token_path: Path) -> str:
    return f"export {ADMIN_TOKEN_ENV}=$(cat {token_path})"


# --- the command ----------------------------------------------------------------------------


def _examples(fleet: Fleet, token_path: Path) -> list[str]:
    a, b, c = (replica.url for replica in list(fleet.replicas.values())[:3])
    auth = f'-H "Authorization: Bearer ${ADMIN_TOKEN_ENV}"'
    return [
        admin_token_hint(token_path),
        "# load through nginx (legacy 1.x requests, 40 a second for two minutes):",
        f"serving-proxy loadtest --host {fleet.url} --path /model/iris/1/invocations "
        "--protocol legacy --rate 40 --duration 120",
        "# a change through one replica ...",
        f"serving-proxy cutover iris 5 --url {a} --reason 'first clients'",
        "# ... is in force on the others; the window is the fleet's",
        f"serving-proxy status --url {b}",
        f"serving-proxy resume iris --url {c}       # let the rollout step up",
        f"curl -s {auth} {b}/admin/replicas",
        f"curl -s {auth} {c}/admin/leader",
        f"serving-proxy history iris --url {a}",
    ]


def run_fleet(*, duration_s: float | None) -> int:
    """Start the fleet, print where everything is, and hold until a signal or `duration_s`.

    Returns 0 after a clean stop, 1 when the fleet could not start.
    """
    with tempfile.TemporaryDirectory(prefix="serving-proxy-fleet-") as tmp:
        workdir = Path(tmp)
        token = os.environ.get(ADMIN_TOKEN_ENV) or secrets.token_hex(32)
        token_path = workdir / "admin-token"
        token_path.touch(mode=0o600)
        token_path.write_text(token)
        fleet = Fleet(workdir, env={**os.environ, ADMIN_TOKEN_ENV: token})
        stop = _StopSignal()
        try:
            fleet.start()
        except FleetError as exc:
            print(f"fleet: {exc}", file=sys.stderr)
            return 1
        try:
            for line in fleet.describe():
                print(line)
            print(f"logs and configs: {workdir}")
            print()
            for line in _examples(fleet, token_path):
                print(line)
            print()
            print("Ctrl-C (or SIGTERM) stops every process.", flush=True)
            stop.wait(duration_s)
        finally:
            fleet.stop()
            stop.restore()
        print("fleet: stopped")
        return 0


class _StopSignal:
    """SIGINT and SIGTERM end the wait; the previous handlers come back afterwards."""

    def __init__(self) -> None:
        self._stopped = False
        self._previous = {
            sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
        }

    def _handle(self, signum: int, frame: object) -> None:
        del signum, frame
        self._stopped = True

    def wait(self, duration_s: float | None) -> None:
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not self._stopped and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.1)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
