"""What the proxy reads from and writes to ASGI: reply messages, the request body, the
record on the scope, and the plain request values the exchange needs.

No decisions and no upstream calls: the rest of the package speaks `Reply` and
`Inbound`, and only this module (and the middleware) speaks ASGI messages.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from proxy.errors import ClientClosed
from proxy.models import Reply
from proxy.telemetry.record import ExchangeRecord

# Routed for every method, so that each endpoint answers a wrong one itself, the way
# 1.30.1 did (§6.5), instead of Starlette's generic 405.
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

# Set on the scope by the server (`proxy.server`) when the request's body is overdue: the
# seconds of `limits.body_timeout_s`. The body's reader then answers 408 (`BodyTimeout`).
BODY_TIMEOUT = "serving_proxy.body_timeout_s"


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


class ReplyResponse(Response):
    """A finished `Reply` as a Starlette response, headers exactly as given."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.status_code = reply.status
        self.body = reply.body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for message in reply_messages(self.reply):
            await send(message)


def record_of(scope: Scope) -> ExchangeRecord | None:
    """The record `RequestContextMiddleware` opened for this request, if any."""
    record = scope.get("state", {}).get("record")
    return record if isinstance(record, ExchangeRecord) else None


async def read_body(receive: Receive) -> bytes:
    """The whole request body; `BodyLimitMiddleware` has already bounded it.

    Raises:
        ClientClosed: the client went away before the last chunk.
    """
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")
        return body  # the common case: one message, no join
    chunks: list[bytes] = []
    while True:
        if message["type"] == "http.disconnect":
            raise ClientClosed()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
        message = await receive()


def client_host(scope: Scope) -> str | None:
    """The client's address: uvicorn's, with trusted forwarding already applied."""
    client = scope.get("client")
    return client[0] if client else None


def query_of(scope: Scope) -> str:
    """The raw query string, as the client sent it."""
    raw: bytes = scope.get("query_string", b"")
    return raw.decode("latin-1")


def raw_path_of(scope: Scope) -> str:
    """The path as the client sent it, undecoded (§1.4 forwards it unchanged)."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    return raw.decode("latin-1")
