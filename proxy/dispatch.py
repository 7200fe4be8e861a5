"""The scoring URLs' own entrance: pure ASGI, just inside the request-context and
body-limit middleware, ahead of Starlette's router (architecture §1.3 step 5).

Every proxied request takes one of three URL shapes (protocols.md §1.2, §1.5). Matching
them by splitting the path, and calling the handler with the scope, skips Starlette's
router, its two exception-handling layers and its `Request` object: on a proxied request
those cost more than translating it (py-spy at concurrency 32: ~15% of the proxy's CPU).
Everything else (auxiliary endpoints, admin, dashboard, metrics, unknown paths) goes on
to the Starlette app as before, so its 404/405 rendering stays in one place.

The properties the router gave are kept: a `ProxyError` becomes its reply through
`handlers.error_reply` (the one renderer), and any other exception is a bug: logged with its
traceback and answered by `handlers.bug_reply`, the function Starlette's error layer uses
for the other routes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy import handlers
from proxy.errors import ProxyError
from proxy.middleware import reply_messages
from proxy.models import Reply

LOGGER = logging.getLogger("serving_proxy")


class Kind(Enum):
    LEGACY = "legacy"  # /model/<name>/<version-or-stage>/invocations (§1.2)
    MODEL_ENDPOINT = "model-endpoint"  # /model-endpoint/<name>/<version>/invocations (§1.5)
    SERVING_ENDPOINT = "serving-endpoint"  # /serving-endpoints/<endpoint>/invocations (§1.5)


@dataclass(frozen=True, slots=True)
class ScoringRoute:
    """A scoring URL's kind and its path parameters (`name` None for serving-endpoints)."""

    kind: Kind
    name: str | None
    segment: str


def scoring_route(path: str) -> ScoringRoute | None:
    """Which scoring URL `path` is, or None for any other path. Pure.

    A parameter is one non-empty path segment, as Starlette's `{param}` matches it.
    """
    if not path.endswith("/invocations"):
        return None
    parts = path.split("/")
    # ["", "model", name, version, "invocations"] and the like; empty segments never match.
    if len(parts) == 5 and parts[2] and parts[3]:
        if parts[1] == "model":
            return ScoringRoute(Kind.LEGACY, parts[2], parts[3])
        if parts[1] == "model-endpoint":
            return ScoringRoute(Kind.MODEL_ENDPOINT, parts[2], parts[3])
    elif len(parts) == 4 and parts[1] == "serving-endpoints" and parts[2]:
        return ScoringRoute(Kind.SERVING_ENDPOINT, None, parts[2])
    return None


async def answer(route: ScoringRoute, scope: Scope, receive: Receive) -> Reply:
    """Run the route's handler; every failure becomes a reply in the client's shape."""
    try:
        if route.kind is Kind.LEGACY:
            assert route.name is not None
            return await handlers.legacy_invocations(scope, receive, route.name, route.segment)
        return await handlers.new_style_invocations(scope, receive, route.name, route.segment)
    except ProxyError as exc:
        return handlers.error_reply(scope, exc)
    except Exception as exc:
        LOGGER.exception("unhandled error on %s %s", scope["method"], scope["path"])
        return handlers.bug_reply(scope, exc)


class ScoringDispatch:
    """Sends the scoring URLs to their handlers and everything else to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = scoring_route(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        for message in reply_messages(await answer(route, scope, receive)):
            await send(message)
