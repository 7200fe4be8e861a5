"""Which headers cross the proxy, in each direction (protocols.md §7). Pure.

The serverless side gets an allow-list; the legacy side gets everything end to end.
Forwarding headers are settled once, where a request enters (`accept_forwarding`): a
client's claims about the path its request took are believed only from a trusted proxy,
and the peer's address is appended to `X-Forwarded-For` for either backend.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
# X-Forwarded-For arrives here already settled by `accept_forwarding`.
SERVERLESS_ALLOWED = frozenset(
    {"user-agent", "accept", "x-request-id", "traceparent", "tracestate", "x-forwarded-for"}
)
# What a client may say about the path its request took. Anyone can write these, so
# they are believed (and passed on) only from a peer in `server.trusted_proxies`.
FORWARDING = frozenset(
    {"x-forwarded-for", "forwarded", "x-forwarded-host", "x-forwarded-proto", "x-real-ip"}
)
_FORWARDING_RAW = frozenset(name.encode("latin-1") for name in FORWARDING)
# Recomputed or owned by this hop.
NOT_FORWARDED = frozenset({"host", "content-length", "expect"})
# Recomputed by this hop (uvicorn writes its own Date; Server would name the upstream).
REPLY_DROPPED = frozenset({"content-length", "server", "date"})

RawHeaders = Iterable[tuple[bytes, bytes]]
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """`server.trusted_proxies`: addresses, networks (`10.0.0.0/8`), other literal names
    (matched as written), or `*` for every peer; the entries uvicorn's
    `forwarded_allow_ips` took, with the same meaning."""

    everyone: bool = False
    addresses: frozenset[_Address] = frozenset()
    networks: tuple[_Network, ...] = ()
    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Sequence[str]) -> TrustedProxies:
        addresses: set[_Address] = set()
        networks: list[_Network] = []
        names: set[str] = set()
        for entry in (e.strip() for e in entries):
            try:
                if "/" in entry:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                else:
                    addresses.add(ipaddress.ip_address(entry))
            except ValueError:
                names.add(entry)
        return cls("*" in names, frozenset(addresses), tuple(networks), frozenset(names))

    def trusts(self, host: str | None) -> bool:
        if self.everyone:
            return True
        # Asked on every request: no list (the default) costs nothing, and an address is
        # parsed once, not per request (ipaddress is slow).
        if not host or not (self.addresses or self.networks or self.names):
            return False
        return _trusts(self, host)


@functools.lru_cache(maxsize=4096)
def _trusts(trusted: TrustedProxies, host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host in trusted.names
    return address in trusted.addresses or any(address in net for net in trusted.networks)


def _host_of(entry: str) -> str:
    """The address of one X-Forwarded-For entry, without a port (`[::1]:80`, `1.2.3.4:80`)."""
    entry = entry.strip()
    if entry.startswith("["):
        return entry[1 : entry.find("]")] if "]" in entry else entry
    if entry.count(":") == 1:
        return entry.split(":", 1)[0]
    return entry


def _forwarded_node(host: str) -> str:
    """RFC 7239 §6: an IPv6 node is bracketed and quoted."""
    return f'"[{host}]"' if ":" in host else host


def accept_forwarding(
    raw: Sequence[tuple[bytes, bytes]], peer: str | None, trusted: TrustedProxies
) -> tuple[str | None, list[tuple[bytes, bytes]]]:
    """Who the client is, and the forwarding headers as both backends get them (§7.1, §7.2).

    From an untrusted peer every client-sent `X-Forwarded-For`, `Forwarded`,
    `X-Forwarded-Host`, `X-Forwarded-Proto` and `X-Real-IP` is dropped: a client could
    otherwise pose as any address to a backend's logs and rate limits. From a trusted
    proxy they are kept, and its `X-Forwarded-For` names the client: the last entry that
    is not itself a trusted proxy (the rule uvicorn's `forwarded_allow_ips` applied).
    Either way the peer is appended to `X-Forwarded-For` (and to `Forwarded`, when a
    trusted proxy sent one), as each proxy on a path does.

    Args:
        raw: the ASGI scope's headers (lower-case names).
        peer: the address of the TCP peer (`scope["client"]` as the server saw it).
        trusted: `server.trusted_proxies`, parsed.

    Returns:
        The client's address (the peer's unless a trusted proxy named another) and the
        headers with the forwarding ones settled, `X-Forwarded-For` as one header.
    """
    believed = trusted.trusts(peer)
    if not believed:
        # The usual case, on every request: one pass, no parsing.
        out = [(name, value) for name, value in raw if name not in _FORWARDING_RAW]
        if peer:
            out.append((b"x-forwarded-for", peer.encode("latin-1")))
        return peer, out
    out = []
    chain: list[str] = []
    forwarded: list[str] = []
    for name, value in raw:
        if name not in _FORWARDING_RAW:
            out.append((name, value))
        elif not believed:
            continue
        elif name == b"x-forwarded-for":
            chain += [e.strip() for e in value.decode("latin-1").split(",") if e.strip()]
        elif name == b"forwarded":
            forwarded.append(value.decode("latin-1").strip())
        else:
            out.append((name, value))
    client = peer
    for entry in reversed(chain):
        host = _host_of(entry)
        client = host
        if not trusted.trusts(host):
            break
    if peer:
        chain.append(peer)
        if forwarded:
            forwarded.append(f"for={_forwarded_node(peer)}")
    if chain:
        out.append((b"x-forwarded-for", ", ".join(chain).encode("latin-1")))
    if forwarded:
        out.append((b"forwarded", ", ".join(forwarded).encode("latin-1")))
    return client, out


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
) -> list[tuple[str, str]]:
    """§7.1: allow-listed client headers, the translated Content-Type, auth by rule.

    With a configured token the client's Authorization is replaced (`inject`); without
    one it is forwarded unchanged (`passthrough`). `X-Forwarded-For` is the one
    `accept_forwarding` settled where the request came in, the peer already appended.
    """
    out: list[tuple[str, str]] = []
    for name, value in headers:
        if (name in SERVERLESS_ALLOWED and name != "x-request-id") or (
            name == "authorization" and token is None
        ):
            out.append((name, value))
    if token is not None:
        out.append(("authorization", f"Bearer {token}"))
    if content_type is not None:
        out.append(("content-type", content_type))
    out.append(("x-request-id", request_id))
    return out


def to_legacy(
    headers: list[tuple[str, str]], *, request_id: str, token: str | None = None
) -> list[tuple[str, str]]:
    """§7.2: every end-to-end header unchanged, Authorization and Content-Type included.

    With the legacy backend's `token_env` set, its token replaces the client's
    Authorization, as §7.1 `inject` does for serverless; unset, the client's passes.
    Forwarding headers are as `accept_forwarding` settled them.
    """
    drop = HOP_BY_HOP | NOT_FORWARDED | _connection_tokens(headers) | {"x-request-id"}
    if token is not None:
        drop = drop | {"authorization"}
    out = [(n, v) for n, v in headers if n not in drop]
    if token is not None:
        out.append(("authorization", f"Bearer {token}"))
    out.append(("x-request-id", request_id))
    return out


def from_passthrough(
    headers: Iterable[tuple[str, str]], *, pass_set_cookie: bool = False
) -> list[tuple[str, str]]:
    """§7.3 pass-through replies: the upstream's headers minus hop-by-hop and this hop's own.

    `Set-Cookie` is dropped unless the backend's `pass_set_cookie` says otherwise: a
    scoring client has no use for a session, and a cookie set by a backend behind the
    proxy would be scoped to the proxy's host, where every client shares it.
    """
    pairs = [(n.lower(), v) for n, v in headers]
    drop = HOP_BY_HOP | REPLY_DROPPED | _connection_tokens(pairs) | {"x-request-id"}
    if not pass_set_cookie:
        drop = drop | {"set-cookie"}
    return [(n, v) for n, v in pairs if n not in drop]
