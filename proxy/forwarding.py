"""Where a request comes in: who the client is, and what the backends hear about it.

The pure rule is `proxy.headers.accept_forwarding` (§7.1, §7.2); this is its ASGI edge.
A module of its own so that the rule's owner and the request-context middleware's can
change their files independently.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy.headers import TrustedProxies, accept_forwarding


class ForwardingMiddleware:
    """Settles the client's address and the forwarding headers once, outermost.

    Outermost, so that the record, the client key, route overrides and the exchange all
    see the client as a trusted proxy named it (or as the peer, when none did), and the
    forwarding headers as the backends will get them. uvicorn's own `proxy_headers` stays
    off (`serving-proxy serve` says so): it would replace the peer before this runs.
    """

    def __init__(self, app: ASGIApp, *, trusted_proxies: tuple[str, ...] = ()) -> None:
        self.app = app
        self.trusted = TrustedProxies.parse(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            peer = scope.get("client")
            host, scope["headers"] = accept_forwarding(
                scope["headers"], peer[0] if peer else None, self.trusted
            )
            if peer and host != peer[0]:
                scope["client"] = (host, 0)
        await self.app(scope, receive, send)
