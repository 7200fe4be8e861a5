"""Pure ASGI middleware that wraps every request (architecture §1.3 steps 3–4, 9).

Never Starlette's base-HTTP middleware class: it buffers and re-wraps every response,
and runs the endpoint in another task, both costly on the hot path.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.asgi import record_of, reply_messages
from proxy.config.cutover import ClientKeyConfig
from proxy.errors import PayloadTooLarge, render
from proxy.routing import client_key, report_label
from proxy.telemetry.record import ExchangeRecord, server_timing

# A client's id is echoed into logs and upstream headers: accept only a plain token.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIds:
    """Request ids for requests that bring none: 32 hex digits, unique across processes.

    80 random bits per process, then a counter: uuid4 reads the OS's random source on
    every request, and request ids need to be unique, not unguessable. A forked child
    draws its own prefix.
    """

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._prefix = os.urandom(10).hex()
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"


REQUEST_IDS = RequestIds()


class RequestContextMiddleware:
    """Stamps the request id, opens the record, and emits it exactly once at the end.

    Args:
        on_complete: called once with every finished record (metrics, stats, access log).
        server_timing: add a `Server-Timing` header to every response.
        client_key: where the client key comes from (`routing.client_key`, read here once
            per request for routing and reports); None leaves it unset.
        show_client_header: reports may show a key read from a header as sent.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        on_complete: Callable[[ExchangeRecord], None],
        server_timing: bool = False,
        client_key: ClientKeyConfig | None = None,
        show_client_header: bool = False,
    ) -> None:
        self.app = app
        self.on_complete = on_complete
        self.server_timing = server_timing
        self.client_key = client_key
        self.show_client_header = show_client_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if REQUEST_ID_RE.match(candidate):
                    request_id = candidate
                break
        client = scope.get("client")
        record = ExchangeRecord(
            request_id=request_id or REQUEST_IDS.next(),
            method=scope["method"],
            path=scope["path"],
            started=time.perf_counter(),
            client=client[0] if client else None,
        )
        key = None
        if self.client_key is not None:
            key = client_key(scope["headers"], record.client, self.client_key)
            if key is not None:
                record.client_key = report_label(key, show_header=self.show_client_header)
        # A copy: servers share one lifespan-state dict, the record is this request's own.
        scope["state"] = {**scope.get("state", {}), "record": record, "client_key": key}
        id_header = (b"x-request-id", record.request_id.encode())
        timing = self.server_timing

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
                if timing:
                    value = server_timing(record, time.perf_counter())
                    message["headers"].append((b"server-timing", value))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            if record.status == 0:
                record.status, record.flag = 500, "BUG"
            raise
        finally:
            record.total_s = time.perf_counter() - record.started
            self.on_complete(record)


class BodyLimitMiddleware:
    """Refuses bodies over the limit (§4.2) before they are buffered.

    A declared Content-Length over the limit is answered here, at once. A chunked body
    is counted as it arrives and `receive` raises `PayloadTooLarge` inside the handler,
    where the app's one error renderer answers it.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.limit:
                    reply = render(PayloadTooLarge(self.limit), record_of(scope))
                    for message in reply_messages(reply):
                        await send(message)
                    return
                break
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise PayloadTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)
