"""Fixtures for the load-test suite: simulators as child processes on loopback, and the CLI.

The simulators run as `python -m proxy simulate` children, not in the pytest process, so
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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.proxy_process import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
# A run of the CLI: duration + locust start-up + the end-of-run catch-up, with room to spare.
RUN_TIMEOUT_S = 90.0


class SimulatorProcess:
    """`python -m proxy simulate --kind KIND --port N` in a child process, for one module."""

    def __init__(self, kind: str, workdir: Path, *extra: str) -> None:
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"simulator-{kind}-{self.port}.log"
        self._command = [
            sys.executable, "-m", "proxy", "simulate",
            "--kind", kind, "--host", "127.0.0.1", "--port", str(self.port), *extra,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self._command, cwd=PROJECT_ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"simulator exited during start-up:\n{self.log()}")
            try:
                if httpx.get(self.url + "/_sim/stats", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"simulator not ready after {START_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

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
        if self.process is None:
            return
        if self.process.poll() is None:
            if self.paused:
                self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self._log.close()


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
