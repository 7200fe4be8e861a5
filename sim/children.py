"""Child processes on loopback for the demo: start, wait until ready, stop by PID.

Every child is stopped by its own PID, never by name; its output goes to a log file.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Final

import httpx

STOP_TIMEOUT_S: Final = 10.0
LOG_TAIL_LINES: Final = 20


class Child:
    """A child process with its output in a log file; stopped by its PID, never by name."""

    def __init__(
        self,
        name: str,
        command: list[str],
        log_path: Path,
        cwd: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> bool:
        return self.process.poll() is not None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within the deadline."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self._log.close()

    def log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(f"  {self.name}| {line}" for line in lines[-LOG_TAIL_LINES:])


def free_ports(count: int) -> list[int]:
    """Ports the kernel picked as free, all held at once so no two are the same."""
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]


def wait_ready(client: httpx.Client, child: Child, url: str, deadline: float) -> None:
    """Poll `url` until it answers 200; fail early if the child exits.

    Raises:
        RuntimeError: the child exited or was not ready by `deadline`.
    """
    while True:
        if child.exited():
            raise RuntimeError(f"{child.name} exited during start-up")
        try:
            if client.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} not ready at {url}")
        time.sleep(0.05)
