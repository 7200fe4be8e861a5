"""Which egress proxy, if any, a backend origin is reached through. Reads the environment.

Resolved once per pool, when it is built. The rules are the standard library's
(`urllib.request.getproxies_environment` and `proxy_bypass`), which requests
and aiohttp follow too: `https_proxy` for https:// origins and `http_proxy` for http://
ones, a lower-case name before its upper-case twin, `HTTP_PROXY` ignored when
`REQUEST_METHOD` is set (a CGI process can be handed one in a client's `Proxy:` header,
"httpoxy"), and `no_proxy` naming hosts, domain suffixes, host:port pairs or `*`.

Only http:// proxies are spoken to (an https:// origin is tunnelled through one with
CONNECT); a proxy URL of any other scheme is refused when the pool is built rather than
silently bypassed. Credentials in the proxy URL become `Proxy-Authorization: Basic`, and
are kept out of every repr and message.
"""

from __future__ import annotations

import base64
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True, slots=True)
class EgressProxy:
    """An HTTP proxy to send through: where it is, and how to authenticate to it."""

    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The proxy's URL without its credentials."""
        return f"http://{authority(self.host, self.port)}"

    @property
    def authorization(self) -> str | None:
        """The Proxy-Authorization value, or None when the URL carried no user."""
        if self.username is None:
            return None
        pair = f"{self.username}:{self.password or ''}".encode("latin-1")
        return "Basic " + base64.b64encode(pair).decode("ascii")


def authority(host: str, port: int) -> str:
    """host:port as a request target or Host value writes it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def egress_proxy(origin: str) -> EgressProxy | None:
    """The proxy the environment names for `origin`, or None to connect directly.

    Raises:
        ValueError: the environment names a proxy this client cannot speak to.
    """
    parts = urlsplit(origin)
    host = parts.hostname or ""
    proxies = urllib.request.getproxies_environment()
    chosen = proxies.get(parts.scheme)
    if not chosen:
        return None
    # NO_PROXY entries may name a port, so the host is matched with it when the origin
    # names one.
    target = host if parts.port is None else authority(host, parts.port)
    # On Linux this is `proxy_bypass_environment`; elsewhere it reads the environment
    # first too, and the system's settings only when no proxy variable is set.
    if urllib.request.proxy_bypass(target):
        return None
    return parse_proxy_url(chosen)


def parse_proxy_url(value: str) -> EgressProxy:
    """An egress proxy from its URL; a bare host:port means http://, as curl reads it."""
    parts = urlsplit(value if "://" in value else "http://" + value)
    if parts.scheme != "http" or not parts.hostname:
        # Never echo the value: it may hold a password.
        raise ValueError(f"egress proxy: only http:// proxy URLs are supported, not {parts.scheme}")
    return EgressProxy(
        host=parts.hostname,
        port=parts.port or 80,
        username=None if parts.username is None else unquote(parts.username),
        password=None if parts.password is None else unquote(parts.password),
    )
