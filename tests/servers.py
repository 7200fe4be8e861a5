"""Run an ASGI app under a real uvicorn server on a loopback port, for tests.

The server gets a socket already bound to 127.0.0.1:0, so the port is known before it
starts and two tests never race for one; it runs in a daemon thread with its own event
loop, and readiness is `server.started`, polled under a deadline (httpx's `serve_in_thread`).

    with LiveServer(create_simulator_app("serverless")) as server:
        httpx.post(server.url + "/invocations", json={"inputs": [[1, 2]]})
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

import uvicorn
from starlette.types import ASGIApp

LOOPBACK = "127.0.0.1"
DEFAULT_STARTUP_TIMEOUT_S = 10.0
DEFAULT_STOP_TIMEOUT_S = 10.0
# Requests still open at stop (a hanging fault, a slow client) are cut after this long,
# so stopping a server never waits on a test's leftovers.
DEFAULT_GRACEFUL_SHUTDOWN_S = 1.0


class LiveServer:
    """A context manager serving `app` with uvicorn on `127.0.0.1:<free port>`.

    Args:
        app: any ASGI 3 app.
        startup_timeout: seconds to wait for uvicorn to report `started`.
        **config: extra `uvicorn.Config` arguments (e.g. `http="h11"`, `loop="asyncio"`);
            by default uvicorn picks as in production (uvloop and httptools when installed).

    Attributes:
        host, port, url: where it listens, known as soon as the object exists.
        server: the `uvicorn.Server`, for tests that need its state.
    """

    def __init__(
        self, app: ASGIApp, *, startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S, **config: Any
    ) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((LOOPBACK, 0))
        self.host: str = LOOPBACK
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        options: dict[str, Any] = {
            "log_level": "warning",
            "access_log": False,
            "timeout_graceful_shutdown": DEFAULT_GRACEFUL_SHUTDOWN_S,
            **config,
        }
        self.server = uvicorn.Server(uvicorn.Config(app, **options))
        self._startup_timeout = startup_timeout
        self._thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self._socket]},
            name=f"LiveServer:{self.port}",
            daemon=True,
        )

    def start(self) -> None:
        """Start serving; return once uvicorn accepts connections.

        Raises:
            RuntimeError: the server stopped during start-up (its error is in the log).
            TimeoutError: it did not start within `startup_timeout`.
        """
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not self.server.started:
            if not self._thread.is_alive():
                self._socket.close()
                raise RuntimeError(f"uvicorn on {self.url} exited during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"uvicorn on {self.url} not started after {self._startup_timeout} s"
                )
            time.sleep(0.005)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Ask uvicorn to exit, force it if it lingers, and join the thread."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(timeout)
        self._socket.close()
        if self._thread.is_alive():
            raise RuntimeError(f"uvicorn on {self.url} did not stop within {2 * timeout} s")

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
