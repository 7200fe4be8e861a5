"""Which headers cross the proxy, in each direction (protocols.md §7). Pure.

The serverless side gets an allow-list; the legacy side gets everything end to end.
"""

from __future__ import annotations

from collections.abc import Iterable

# RFC 9110 §7.6.1, plus the obsolete Proxy-Connection that some clients still send.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# §7.1: the only client headers a serverless endpoint sees (plus Authorization by rule).
SERVERLESS_ALLOWED = frozenset(
    {"user-agent", "accept", "x-request-id", "traceparent", "tracestate"}
)
# Recomputed or owned by this hop.
NOT_FORWARDED = frozenset({"host", "content-length", "expect"})
# Recomputed by this hop (uvicorn writes its own Date; Server would name the upstream).
REPLY_DROPPED = frozenset({"content-length", "server", "date"})

RawHeaders = Iterable[tuple[bytes, bytes]]


def _connection_tokens(headers: list[tuple[str, str]]) -> set[str]:
    tokens: set[str] = set()
    for name, value in headers:
        if name == "connection":
            tokens.update(t.strip().lower() for t in value.split(","))
    return tokens


def decode(raw: RawHeaders) -> list[tuple[str, str]]:
    """ASGI header pairs as lower-case names and latin-1 values (RFC 9110 §5.5)."""
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]


def to_serverless(
    headers: list[tuple[str, str]],
    *,
    content_type: str | None,
    token: str | None,
    request_id: str,
    client_host: str | None,
) -> list[tuple[str, str]]:
    """§7.1: allow-listed client headers, the translated Content-Type, auth by rule.

    With a configured token the client's Authorization is replaced (`inject`); without
    one it is forwarded unchanged (`passthrough`).
    """
    out: list[tuple[str, str]] = []
    forwarded_for: str | None = None
    for name, value in headers:
        if (name in SERVERLESS_ALLOWED and name != "x-request-id") or (
            name == "authorization" and token is None
        ):
            out.append((name, value))
        elif name == "x-forwarded-for":
            forwarded_for = value
    if token is not None:
        out.append(("authorization", f"Bearer {token}"))
    if content_type is not None:
        out.append(("content-type", content_type))
    out.append(("x-request-id", request_id))
    if client_host:
        chain = f"{forwarded_for}, {client_host}" if forwarded_for else client_host
        out.append(("x-forwarded-for", chain))
    return out


def to_legacy(headers: list[tuple[str, str]], *, request_id: str) -> list[tuple[str, str]]:
    """§7.2: every end-to-end header unchanged, Authorization and Content-Type included."""
    drop = HOP_BY_HOP | NOT_FORWARDED | _connection_tokens(headers) | {"x-request-id"}
    out = [(n, v) for n, v in headers if n not in drop]
    out.append(("x-request-id", request_id))
    return out


def from_passthrough(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """§7.3 pass-through replies: the upstream's headers minus hop-by-hop and this hop's own."""
    pairs = [(n.lower(), v) for n, v in headers]
    drop = HOP_BY_HOP | REPLY_DROPPED | _connection_tokens(pairs) | {"x-request-id"}
    return [(n, v) for n, v in pairs if n not in drop]
