"""The scoring URLs' own entrance: pure ASGI, just inside the request-context and
body-limit middleware, ahead of Starlette's router (architecture §1.3 step 5).

Every proxied request takes one of three URL shapes (protocols.md §1.2, §1.5). Matching
them by splitting the path, and calling the handler with the scope, skips Starlette's
router, its two exception-handling layers and its `Request` object: on a proxied request
those cost more than translating it (py-spy at concurrency 32: ~15% of the proxy's CPU).
Everything else (auxiliary endpoints, admin, dashboard, metrics, unknown paths) goes on
to the Starlette app as before, so its 404/405 rendering stays in one place.

The properties the router gave are kept: a `ProxyError` becomes its reply through
`handlers.error_reply` (the one renderer), and any other exception propagates to
Starlette's `ServerErrorMiddleware`, which renders the bug reply as it did.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy import handlers
from proxy.errors import ProxyError
from proxy.middleware import reply_messages
from proxy.models import Reply

Handler = Callable[[Scope, Receive], Awaitable[Reply]]


def scoring_route(path: str) -> Handler | None:
    """The handler for a scoring URL, bound to its path parameters, or None.

    A parameter is one non-empty path segment, as Starlette's `{param}` matches it.
    """
    if not path.endswith("/invocations"):
        return None
    parts = path.split("/")
    # ["", "model", name, version, "invocations"] and the like; empty segments never match.
    if len(parts) == 5 and parts[2] and parts[3]:
        kind, name, segment = parts[1], parts[2], parts[3]
        if kind == "model":
            return lambda scope, receive: handlers.legacy_invocations(scope, receive, name, segment)
        if kind == "model-endpoint":
            return lambda scope, receive: handlers.new_style_invocations(
                scope, receive, name, segment
            )
    elif len(parts) == 4 and parts[1] == "serving-endpoints" and parts[2]:
        endpoint = parts[2]
        return lambda scope, receive: handlers.new_style_invocations(scope, receive, None, endpoint)
    return None


class ScoringDispatch:
    """Sends the scoring URLs to their handlers and everything else to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = scoring_route(scope["path"]) if scope["type"] == "http" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        try:
            reply = await handler(scope, receive)
        except ProxyError as exc:
            reply = handlers.error_reply(scope, exc)
        for message in reply_messages(reply):
            await send(message)
