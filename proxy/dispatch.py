"""The scoring URLs' own entrance: pure ASGI, just inside the request-context and
body-limit middleware, ahead of Starlette's router (architecture §1.3 step 5).

Every proxied request takes one of three URL shapes (`protocol.paths.scoring_url`).
Matching them and calling the handler with the scope skips Starlette's router, its two
exception-handling layers and its `Request` object, which on a proxied request cost more
than translating it. Everything else (auxiliary endpoints, admin, dashboard, metrics,
unknown paths) goes on to the Starlette app, so its 404/405 rendering stays as it is.

The properties the router gave are kept: a `ProxyError` becomes its reply through
`errors.render` (the one renderer), and any other exception is a bug: logged with its
traceback and answered by `errors.render_bug`, as Starlette's error layer does for the
other routes.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from proxy import handlers
from proxy.asgi import record_of, reply_messages
from proxy.errors import ProxyError, render, render_bug
from proxy.models import Reply
from proxy.protocol.paths import ScoringUrl, UrlKind, scoring_url

LOGGER = logging.getLogger("serving_proxy")


async def answer(url: ScoringUrl, scope: Scope, receive: Receive) -> Reply:
    """Run the URL's handler; every failure becomes a reply in the client's shape."""
    try:
        if url.kind is UrlKind.LEGACY:
            assert url.name is not None
            return await handlers.legacy_invocations(scope, receive, url.name, url.segment)
        return await handlers.new_style_invocations(scope, receive, url.name, url.segment)
    except ProxyError as exc:
        return render(exc, record_of(scope))
    except Exception as exc:
        LOGGER.exception("unhandled error on %s %s", scope["method"], scope["path"])
        return render_bug(exc, record_of(scope))


class ScoringDispatch:
    """Sends the scoring URLs to their handlers and everything else to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        url = scoring_url(scope["path"]) if scope["type"] == "http" else None
        if url is None:
            await self.app(scope, receive, send)
            return
        for message in reply_messages(await answer(url, scope, receive)):
            await send(message)
