"""A real `redis-server` on a free loopback port, for tests; stopped by its PID.

No persistence (`--save ""`, `--appendonly no`) unless asked for, and its files in a
temporary directory, so a test run leaves nothing behind. `halt()` stops the process and
`start()` starts it again on the same port and directory (a Redis restart: with
`persist=True` it comes back with its data, otherwise empty). Tests marked `redis` skip,
with the reason, only when the binary is not installed (scripts/test installs the Debian
package).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Self

import pytest

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_S = 10.0
BINARY = "redis-server"
MISSING = (
    "redis-server is not installed (Debian package redis-server; scripts/test installs it "
    "as root with apt-get)"
)


def available() -> bool:
    return shutil.which(BINARY) is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _pong(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            # A server with a password answers NOAUTH: up all the same.
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisServer:
    """`with RedisServer() as server: ... server.url` (db 0)."""

    def __init__(self, *, persist: bool = False, password: str | None = None) -> None:
        self.port = _free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        self.persist = persist
        self.password = password
        self._dir = tempfile.TemporaryDirectory(prefix="serving-proxy-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        binary = shutil.which(BINARY)
        if binary is None:
            raise RuntimeError(MISSING)
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                LOOPBACK,
                "--save",
                "",
                "--appendonly",
                # Every write on disk before its reply, so a restart finds the last one.
                "yes" if self.persist else "no",
                "--appendfsync",
                "always",
                *(["--requirepass", self.password] if self.password else []),
                "--daemonize",
                "no",
                "--dir",
                self._dir.name,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _pong(self.port):
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server on port {self.port} not up in time")
            time.sleep(0.02)

    def halt(self) -> None:
        """Stop the process, keeping the port and the directory for `start()`."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # by PID: this process only
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def stop(self) -> None:
        self.halt()
        self._dir.cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture(name="redis", params=[True, False], ids=["restart-with-data", "restart-empty"])
def restartable_redis(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A redis-server the test may stop and start again, once keeping its data on disk and
    once coming back empty (import it into a test module to use it as `redis`)."""
    if not available():
        pytest.skip(MISSING)
    with RedisServer(persist=request.param) as server:
        yield server
