"""Fixtures for the load-test suite: simulators as child processes on loopback, and the CLI.

The simulators run as `python -m sim simulate` children, not in the pytest process, so
the load generator, the simulator and pytest each have their own interpreter (two cores),
and a test can freeze a simulator with SIGSTOP to make a real one-second stall. Every
child is stopped by its PID. Locust itself is never imported here: it monkey-patches the
process with gevent; the CLI runs it as a child.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.proxy_process import ChildServer

PROJECT_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
# A run of the CLI: duration + locust start-up + the end-of-run catch-up, with room to spare.
RUN_TIMEOUT_S = 90.0


class SimulatorProcess(ChildServer):
    """`python -m sim simulate --kind KIND --port N` in a child process, for one module."""

    name = "simulator"
    ready_path = "/_sim/stats"

    def __init__(self, kind: str, workdir: Path, *extra: str) -> None:
        super().__init__(workdir, start_timeout=START_TIMEOUT_S)
        self.kind = kind
        self.extra = extra
        self.paused = False

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "sim", "simulate",
            "--kind", self.kind, "--host", "127.0.0.1", "--port", str(self.port), *self.extra,
        ]  # fmt: skip

    def stats(self) -> dict[str, Any]:
        response = httpx.get(self.url + "/_sim/stats", timeout=5.0)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def total(self) -> int:
        return int(self.stats()["total"])

    def reset(self, **faults: Any) -> None:
        """Zero the counts and set the fault knobs (none: all off)."""
        httpx.put(self.url + "/_sim/faults", json=faults, timeout=5.0).raise_for_status()
        httpx.post(self.url + "/_sim/reset", timeout=5.0).raise_for_status()

    def pause(self) -> None:
        """Freeze the whole server process: a real stall, connections queue in the kernel."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 10.0) -> None:
        # A frozen process cannot act on SIGTERM: thaw it first.
        if self.paused and self.process is not None and self.process.poll() is None:
            self.resume()
        super().stop(timeout)


@pytest.fixture(scope="module")
def serverless_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess("serverless", tmp_path_factory.mktemp("sim"))
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def legacy_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    sim = SimulatorProcess("legacy", tmp_path_factory.mktemp("sim"))
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "loadtests", *args]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m loadtests ARGS` to its end (bounded), output captured."""
    return subprocess.run(
        cli_command(*args),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def read_summary(report_dir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((report_dir / "summary.json").read_text())
    return summary
