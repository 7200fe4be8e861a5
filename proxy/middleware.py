"""Pure ASGI middleware that wraps every request (architecture §1.3 steps 3–4, 9).

Never Starlette's base-HTTP middleware class: it buffers and re-wraps every response,
and runs the endpoint in another task, both costly on the hot path.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.config import ClientKeyConfig
from proxy.errors import PayloadTooLarge
from proxy.models import Backend, ExchangeRecord, Reply

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


def reply_messages(reply: Reply, extra: list[tuple[bytes, bytes]] | None = None) -> list[Message]:
    """The two ASGI messages of a buffered reply."""
    headers = [(b"content-length", str(len(reply.body)).encode())]
    if reply.content_type is not None:
        headers.append((b"content-type", reply.content_type.encode("latin-1")))
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers]
    headers += extra or []
    return [
        {"type": "http.response.start", "status": reply.status, "headers": headers},
        {"type": "http.response.body", "body": reply.body},
    ]


def record_of(scope: Scope) -> ExchangeRecord | None:
    """The record `RequestContextMiddleware` opened for this request, if any."""
    record = scope.get("state", {}).get("record")
    return record if isinstance(record, ExchangeRecord) else None


def hash_client_key(value: str) -> str:
    """A stable, short digest of a client key: the same in every worker and every restart."""
    return hashlib.blake2b(value.encode("utf-8"), digest_size=6, person=b"sp-client").hexdigest()


# The same few clients call again and again: a header value or an address is hashed once
# (bounded). Never an Authorization value: a cache would keep tokens alive in memory.
_hash_remembered = functools.lru_cache(maxsize=4096)(hash_client_key)


def client_key_reader(
    config: ClientKeyConfig, *, show_header: bool = False
) -> Callable[[Scope], str | None]:
    """Reads a request's client key for reports: the configured header, else the
    Authorization header, else the address (issue 3's order), always hashed but for a
    header value the config allows to be shown. An Authorization value is never shown."""
    header = None if config.header is None else config.header.encode("latin-1")

    def read(scope: Scope) -> str | None:
        if header is not None or config.authorization:
            for name, value in scope["headers"]:
                if name == header and value.strip():
                    text = value.strip().decode("latin-1")
                    return text if show_header else _hash_remembered(text)
            if config.authorization:
                for name, value in scope["headers"]:
                    if name == b"authorization" and value.strip():
                        return hash_client_key(value.strip().decode("latin-1"))
        client = scope.get("client")
        if config.address and client:
            return _hash_remembered(str(client[0]))
        return None

    return read


_TIMING_DESC: dict[Backend | None, bytes] = {b: f';desc="{b}"'.encode() for b in Backend}


def server_timing(record: ExchangeRecord, now: float) -> bytes:
    """The W3C Server-Timing value, in ms, as the response starts: `proxy` is the proxy's
    own time so far (translation included), `upstream` the wait on the backend it names,
    `translate` the translation alone."""
    # Bytes %-formatting: it runs on every response, and skips building and encoding a str.
    upstream = record.upstream_s
    own = now - record.started - (upstream or 0.0)
    if own < 0.0:
        own = 0.0  # never negative: the upstream wait is timed apart and may overshoot
    value = b"proxy;dur=%.3f" % (own * 1e3)
    if upstream is not None:
        desc = _TIMING_DESC.get(record.backend, b"")
        value += b", upstream;dur=%.3f%s" % (upstream * 1e3, desc)
    if record.translate_s > 0:
        value += b", translate;dur=%.3f" % (record.translate_s * 1e3)
    return value


class RequestContextMiddleware:
    """Stamps the request id, opens the record, and emits it exactly once at the end.

    Args:
        on_complete: called once with every finished record (metrics, stats, access log).
        server_timing: add a `Server-Timing` header to every response (issue 4).
        client_key: reads the client key that reports show; None leaves it unset.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        on_complete: Callable[[ExchangeRecord], None],
        server_timing: bool = False,
        client_key: Callable[[Scope], str | None] | None = None,
    ) -> None:
        self.app = app
        self.on_complete = on_complete
        self.server_timing = server_timing
        self.client_key = client_key

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
        # A copy: servers share one lifespan-state dict, the record is this request's own.
        scope["state"] = {**scope.get("state", {}), "record": record}
        if self.client_key is not None:
            record.client_key = self.client_key(scope)
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
                    error = PayloadTooLarge(self.limit)
                    record = record_of(scope)
                    if record is not None:
                        record.flag, record.detail = error.flag, error.message
                    for message in reply_messages(error.to_reply()):
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
