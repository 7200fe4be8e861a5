"""What every benchmark needs to run servers: a free loopback port and a child process.

Each server is a child process on 127.0.0.1, ready when its port accepts (and, given a
`ready` path, answers it with 200), always stopped by its PID: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Child(NamedTuple):
    url: str
    pid: int


def leave_first_cpu() -> set[int] | None:
    """Move this process (and so the load generator and backends it starts from now on)
    off its first CPU, and return that CPU for the measured proxies (`pin`); None on a
    machine of one CPU. On a small machine the scheduler moving a proxy, wrk and the
    backend between the same two cores is most of the noise between rounds."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    os.sched_setaffinity(0, cpus[1:])
    return {cpus[0]}


def pin(pids: list[int], cpus: set[int]) -> None:
    """Keep the processes `pids` on `cpus`."""
    for pid in pids:
        os.sched_setaffinity(pid, cpus)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int, ready: str | None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            if ready is None:
                return True
            sock.sendall(f"GET {ready} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the parenthesised command name: state is [0], utime [11], stime [12].
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class CpuMeter:
    """CPU seconds (user + system) a process, and apart from it its live child processes
    (the proxy's shadow worker), spend between `start` and `stop`.

    Read from /proc, so Linux only; elsewhere, or with no pid, `per_request` is NaN and
    the table shows a dash.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._start: tuple[float, dict[int, float]] | None = None
        self._spent: tuple[float, float] | None = None

    def _read(self) -> tuple[float, dict[int, float]] | None:
        own = _cpu_seconds(self.pid) if self.pid else None
        if own is None:
            return None
        kids = {kid: _cpu_seconds(kid) for kid in _children(self.pid)}
        return own, {kid: spent for kid, spent in kids.items() if spent is not None}

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> None:
        end = self._read()
        if end is None or self._start is None:
            self._spent = None
            return
        # A child born during the measurement counts from zero.
        kids = sum(spent - self._start[1].get(kid, 0.0) for kid, spent in end[1].items())
        self._spent = (end[0] - self._start[0], kids)

    def per_request(self, count: float) -> float:
        """Microseconds of CPU per request of the process itself, or NaN when unknown."""
        if self._spent is None or count <= 0:
            return float("nan")
        return self._spent[0] / count * 1e6

    def children_per_request(self, count: float) -> float:
        """Microseconds of CPU per request of its child processes, or NaN when unknown."""
        if self._spent is None or count <= 0:
            return float("nan")
        return self._spent[1] / count * 1e6


@contextmanager
def child(
    args: list[str],
    port: int,
    *,
    ready: str | None = None,
    log: Path | None = None,
    start_timeout: float = 30.0,
    stop_timeout: float = 10.0,
    env: dict[str, str] | None = None,
) -> Iterator[Child]:
    """Run `args` (a whole argv), wait until it serves on `port`, stop it by PID."""
    out = log.open("wb") if log is not None else None
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=out if out is not None else subprocess.DEVNULL,
        env=env or None,
    )
    try:
        deadline = time.monotonic() + start_timeout
        while not _answers(port, ready):
            if process.poll() is not None:
                raise RuntimeError(f"{args} exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{args} did not start")
            time.sleep(0.05)
        yield Child(f"http://127.0.0.1:{port}", process.pid)
    finally:
        process.terminate()
        try:
            process.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if out is not None:
            out.close()


# --- wrk: a load generator in C, so the client costs the machine little ------------------


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "{content_type}"
"""


def parse_wrk(text: str) -> dict[str, float]:
    """Requests/sec and the 50%/99% latency lines of `wrk --latency` output."""
    units = {"us": 1e-3, "ms": 1.0, "s": 1e3}

    def ms(token: str) -> float:
        for unit in ("us", "ms", "s"):
            if token.endswith(unit):
                return float(token[: -len(unit)]) * units[unit]
        raise ValueError(token)

    out: dict[str, float] = {"errors": 0.0, "n": 0.0}
    for line in text.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            out["rps"] = float(parts[1])
        elif parts[:1] == ["50%"]:
            out["p50_ms"] = ms(parts[1])
        elif parts[:1] == ["99%"]:
            out["p99_ms"] = ms(parts[1])
        elif "requests in" in line:
            out["n"] = float(parts[0])
        elif line.strip().startswith("Non-2xx"):
            out["errors"] = float(parts[-1])
    return out


def load_wrk(
    url: str,
    body: bytes,
    content_type: str,
    concurrency: int,
    seconds: float,
    meter: CpuMeter,
    tmp: str,
    headers: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """The same measurement with wrk (C, one thread): the client costs the machine less.
    `headers`: sent with every request besides Content-Type."""
    extra = sorted((headers or {}).items())
    script = Path(tmp) / f"post-{abs(hash((url, concurrency, tuple(extra))))}.lua"
    script.write_text(
        WRK_SCRIPT.format(body=json.dumps(body.decode()), content_type=content_type)
        + "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in extra)
    )
    base = ["wrk", "-t1", f"-c{concurrency}", "-s", str(script)]
    subprocess.run([*base, "-d1s", url], capture_output=True, check=True, timeout=30)
    meter.start()
    done = subprocess.run(
        [*base, f"-d{max(1, round(seconds))}s", "--latency", url],
        capture_output=True,
        check=True,
        text=True,
        timeout=seconds + 30,
    )
    meter.stop()
    cell = parse_wrk(done.stdout)
    return cell | {
        "cpu_us": meter.per_request(cell["n"]),
        "child_cpu_us": meter.children_per_request(cell["n"]),
    }
