"""Pure ASGI middleware that wraps every request (architecture §1.3 steps 3–4, 9).

Never Starlette's base-HTTP middleware class: it buffers and re-wraps every response,
and runs the endpoint in another task, both costly on the hot path.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.asgi import BODY_TIMEOUT, record_of, reply_messages
from proxy.budget import MemoryBudget
from proxy.clientauth import ClientAuth
from proxy.config.cutover import ClientKeyConfig
from proxy.errors import (
    BodyTimeout,
    InternalError,
    Overloaded,
    PayloadTooLarge,
    ProxyError,
    render,
)
from proxy.headers import TrustedProxies, accept_forwarding
from proxy.protocol.paths import scoring_url
from proxy.routing import ClientKey, client_key
from proxy.telemetry.labels import ClientLabels
from proxy.telemetry.record import ExchangeRecord, server_timing

LOGGER = logging.getLogger("serving_proxy")
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
    """Settles who the client is, stamps the request id, opens the record, and emits it
    exactly once at the end.

    Outermost, so that the record, the client key, route overrides and the exchange all
    see the client as a trusted proxy named it (or as the peer, when none did), and the
    forwarding headers as the backends will get them (`headers.accept_forwarding`).
    uvicorn's own `proxy_headers` stays off (`serving-proxy serve` says so): it would
    replace the peer before this runs. One layer rather than two: every layer is a call
    and a frame on every request.

    Args:
        on_complete: called once with every finished record (metrics, stats, access log).
        server_timing: add a `Server-Timing` header to every response.
        client_key: where the client key comes from (`routing.client_key`, read here once
            per request for routing and reports); None leaves it unset.
        labels: names the client in the record (a keyed hash; default: keyed by a secret
            of this process).
        trusted_proxies: `server.trusted_proxies`; only their forwarding headers count.
        client_auth: proves the client of every scoring URL before anything else reads
            it (None: `client_auth` unset or `none`). A refused client is answered here,
            through the one renderer, and nothing is forwarded. The proven identity goes
            on the record, names the client in reports, and is what route overrides and
            `client_key.identity` use. `/ping`, `/health`, `/version` stay open, as in
            1.x (answered locally, nothing forwarded); the admin API has its own token.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        on_complete: Callable[[ExchangeRecord], None],
        server_timing: bool = False,
        client_key: ClientKeyConfig | None = None,
        labels: Callable[[ClientKey], str] | None = None,
        trusted_proxies: tuple[str, ...] = (),
        client_auth: ClientAuth | None = None,
    ) -> None:
        self.app = app
        self.client_auth = client_auth
        self.trusted = TrustedProxies.parse(trusted_proxies)
        self.on_complete = on_complete
        self.server_timing = server_timing
        self.client_key = client_key
        self.labels = labels if labels is not None else ClientLabels(None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        peer = client[0] if client else None
        host, headers = accept_forwarding(scope["headers"], peer, self.trusted)
        scope["headers"] = headers
        if host != peer:
            scope["client"] = (host, 0)
        request_id = None
        for name, value in headers:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if REQUEST_ID_RE.match(candidate):
                    request_id = candidate
                break
        record = ExchangeRecord(
            request_id=request_id or REQUEST_IDS.next(),
            method=scope["method"],
            path=scope["path"],
            started=time.perf_counter(),
            client=host,
        )
        refused: ProxyError | None = None
        identity = None
        if self.client_auth is not None and scoring_url(scope["path"]) is not None:
            try:
                identity = (await self.client_auth.authenticate(headers, record.request_id)).name
            except ProxyError as exc:
                refused = exc
            except Exception:
                # A bug in the check: never a pass, and still this request's one record.
                LOGGER.exception("client_auth failed on request %s", record.request_id)
                refused = InternalError()
            else:
                record.identity = identity
                # A proven client is named by its identity in every report, not its address.
                record.client_key = self.labels(ClientKey("identity", identity, identity))
        key = None
        if self.client_key is not None and refused is None:
            key = client_key(headers, host, self.client_key, identity)
            if key is not None and identity is None:
                record.client_key = self.labels(key)
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
            if refused is None:
                await self.app(scope, receive, send_with_id)
            else:
                for message in reply_messages(render(refused, record)):
                    await send_with_id(message)
        except BaseException:
            if record.status == 0:
                record.status, record.flag = 500, "BUG"
            raise
        finally:
            record.total_s = time.perf_counter() - record.started
            self.on_complete(record)


class BodyLimitMiddleware:
    """Bounds each request's body (§4.2, §6.5) before the app buffers it.

    - A declared Content-Length over `max_body_bytes` is answered 413 here, at once; a
      chunked body is counted as it arrives and `receive` raises `PayloadTooLarge`.
    - The body is admitted against the memory `budget`: a declared one by its length
      before it is read (503 `Overloaded` here when no room comes within the budget's
      wait), a chunked one chunk by chunk (`receive` raises `Overloaded`). Its bytes are
      given back once the reply is done.
    - When the server marks the body overdue (`asgi.BODY_TIMEOUT`), `receive` raises
      `BodyTimeout` (408, then the connection closes).

    The errors raised inside `receive` reach the app's one error renderer.
    """

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, budget: MemoryBudget | None = None
    ) -> None:
        self.app = app
        self.limit = max_body_bytes
        # No budget: bodies are bounded by size alone (apps built for tests and tools).
        self.budget = budget or MemoryBudget(sys.maxsize, 0.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = -1
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit():
                    declared = int(value)
                break
        limit = self.limit
        if declared > limit:
            await _answer(PayloadTooLarge(limit), scope, send)
            return
        budget = self.budget
        held = 0
        if declared > 0:
            if not budget.take_now(declared):
                try:
                    await budget.take(declared)
                except Overloaded as exc:
                    await _answer(exc, scope, send)
                    return
            held = declared
        seen = 0

        async def counted() -> Message:
            nonlocal seen, held
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                seen += size
                if seen > limit:
                    raise PayloadTooLarge(limit)
                if declared < 0 and size:
                    if not budget.take_now(size):
                        await budget.take(size)
                    held += size
                if message.get("more_body", False) and BODY_TIMEOUT in scope:
                    raise BodyTimeout(scope[BODY_TIMEOUT])
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            if held:
                budget.give(held)


async def _answer(error: ProxyError, scope: Scope, send: Send) -> None:
    """A local reply before the app has run, through the one renderer."""
    for message in reply_messages(render(error, record_of(scope))):
        await send(message)
