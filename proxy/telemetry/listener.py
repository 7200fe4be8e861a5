"""`metrics.listen`: `/metrics` on a listener of its own, e.g. a port the Service does not
expose, so that scrapes never share the clients' port. I/O only.

The listener runs inside the app's lifespan on the app's event loop, with uvicorn's HTTP
protocol; it serves the app itself, and everything but `/metrics` there is 404. Requests
that came through it carry `METRICS_LISTENER` in their scope: with `metrics.listen` set,
`/metrics` answers only those (`proxy.admin.auth.require_metrics`).

With `server.workers` > 1 every worker process runs this lifespan and binds the same
address: SO_REUSEPORT lets them all listen, and the kernel spreads scrapes over them.
Any one answers for all of them: the metrics are prometheus-client's multiprocess files.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.server import ServerState

from proxy.config.backends import Listen
from proxy.errors import NoRoute, render

METRICS_PATH = "/metrics"
# Set on the scope of every request that came in through the metrics listener.
METRICS_LISTENER = "serving_proxy.metrics_listener"


class MetricsListener:
    """`/metrics` of `app` on `listen`, until `aclose`.

    Args:
        app: the proxy's ASGI app (its `/metrics` route does the answering).
        listen: where to listen.
        shared: several worker processes bind the same address (SO_REUSEPORT).
    """

    def __init__(self, app: ASGIApp, listen: Listen, *, shared: bool = False) -> None:
        self.app = app
        self.listen = listen
        self.shared = shared
        self.port = listen.port
        self._server: asyncio.Server | None = None
        self._state = ServerState()

    async def _only_metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is the main server's; websockets are not served
        if scope["path"] != METRICS_PATH:
            # Nothing else is served here (not through `proxy.asgi`, which telemetry must
            # not import: it imports telemetry).
            reply = render(NoRoute(f"no route for {scope['path']}"))
            headers = [(b"content-length", str(len(reply.body)).encode())]
            if reply.content_type is not None:
                headers.append((b"content-type", reply.content_type.encode("latin-1")))
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "http.response.body", "body": reply.body})
            return
        await self.app({**scope, METRICS_LISTENER: True}, receive, send)

    def _socket(self) -> socket.socket:
        host, port = self.listen.host, self.listen.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.shared:
                if not hasattr(socket, "SO_REUSEPORT"):
                    raise OSError(
                        "metrics.listen with server.workers > 1 needs SO_REUSEPORT, which "
                        "this platform lacks"
                    )
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def start(self) -> None:
        """Bind and serve. Raises `OSError` when the address cannot be bound."""
        config = uvicorn.Config(
            self._only_metrics,
            # Told, not guessed: uvicorn's guess takes a bound method for ASGI 2.
            interface="asgi3",
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            access_log=False,
            # None: leave the process's logging as the main server configured it.
            log_config=None,
        )
        config.load()
        sock = self._socket()
        self.port = sock.getsockname()[1]
        state = self._state

        def protocol() -> Any:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state={}
            )

        self._server = await asyncio.get_running_loop().create_server(protocol, sock=sock)

    async def aclose(self) -> None:
        """Stop listening; idle connections close now, a scrape in flight finishes."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._state.connections):
            connection.shutdown()
        await self._server.wait_closed()
        self._server = None
