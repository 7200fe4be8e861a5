"""What a connection may cost before the app sees its request (`limits:`), and the bytes
of a reply the server makes itself (proxy/server.py enforces them; §6.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from proxy.config.backends import Limits
from proxy.models import Reply


@dataclass(frozen=True)
class ServerLimits:
    """What one connection may cost before the app sees its request (`limits:`)."""

    header_bytes: int
    head_timeout_s: float
    body_timeout_s: float
    # This process's share of `limits.max_connections`.
    max_connections: int

    @classmethod
    def of(cls, limits: Limits, workers: int = 1) -> ServerLimits:
        """`limits:` for one of `workers` processes: each serves its share of connections."""
        return cls(
            limits.header_bytes,
            limits.head_timeout_s,
            limits.body_timeout_s,
            max(1, math.ceil(limits.max_connections / workers)),
        )


DEFAULT_LIMITS = ServerLimits.of(Limits())
# How long a refused connection is read (and its bytes dropped) after its answer went out:
# long enough for the client to read the answer, short enough to cost nothing.
LINGER_S = 1.0
# Once the app is told its body is overdue, how long it has to answer 408 before this
# protocol answers in its place (an endpoint that does not read its body).
BODY_GRACE_S = 1.0
# uvloop's timers run on a millisecond clock and may fire that much early.
TIMER_SLACK_S = 0.005
# A request line's bytes besides its URL: the method, two spaces, the version, CRLF.
REQUEST_LINE_SLACK = 32


def raw_reply(reply: Reply, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A local reply as the HTTP/1.1 bytes of a response that closes its connection."""
    parts = [STATUS_LINE[reply.status]]
    for name, value in default_headers:
        parts += [name, b": ", value, b"\r\n"]
    if reply.content_type is not None:
        parts += [b"content-type: ", reply.content_type.encode("latin-1"), b"\r\n"]
    parts += [b"content-length: ", str(len(reply.body)).encode(), b"\r\n"]
    for key, text in reply.headers:
        if key.lower() != "connection":
            parts += [key.encode("latin-1"), b": ", text.encode("latin-1"), b"\r\n"]
    parts += [b"connection: close\r\n\r\n", reply.body]
    return b"".join(parts)
