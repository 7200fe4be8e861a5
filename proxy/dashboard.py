"""The reporting endpoints: `GET /metrics`, and behind the admin token `GET /admin/report`
(the JSON the `report` command and the dashboard read) and `GET /admin/dashboard` (one
HTML page and its script, served from `proxy/static`, no CDN, no build step).

Shell only: every figure comes from `proxy.reporting`; nothing here computes one.
"""

from __future__ import annotations

import base64
import binascii
from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import admin, jsoncodec
from proxy.reporting import Reporting

REALM = 'Basic realm="serving-proxy admin", charset="UTF-8"'
# The page and its script are static; the data is fetched, so they may be cached briefly.
STATIC_CACHE = "private, max-age=60"
SECURITY_HEADERS = {
    # Everything the page needs comes from the proxy itself (issue 4: works offline).
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@cache
def static_file(name: str) -> bytes:
    """A file of `proxy/static`, read once (it ships inside the wheel)."""
    return resources.files("proxy").joinpath("static", name).read_bytes()


def reporting_of(request: Request) -> Reporting:
    reporting: Reporting = request.app.state.reporting
    return reporting


def bearer_from_basic(authorization: str) -> str | None:
    """`Bearer <password>` for `Basic base64(user:password)`, else None.

    A browser cannot send a bearer token by itself; it asks a person for a user name and
    password once and then sends them with the page's own requests. The password is the
    admin token; the user name means nothing.
    """
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    password = decoded.partition(":")[2]
    return f"Bearer {password}" if password else None


def require_browser_admin(request: Request) -> None:
    """Issue 3's `admin.require_admin`, also accepting the token as a Basic password.

    The one check stays in `proxy.admin`: a Basic credential is rewritten to the bearer
    form in a copy of the scope and handed to it. A refusal asks the browser for Basic.

    Raises:
        NoRoute, AdminError: as `require_admin` does.
    """
    bearer = bearer_from_basic(request.headers.get("authorization", ""))
    if bearer is not None:
        headers = [(k, v) for k, v in request.scope["headers"] if k != b"authorization"]
        headers.append((b"authorization", bearer.encode("utf-8")))
        request = Request({**request.scope, "headers": headers})
    try:
        admin.require_admin(request)
    except admin.AdminError as exc:
        if exc.status_code != 401:
            raise
        raise admin.AdminError(
            401, exc.error, exc.message, (("www-authenticate", REALM),)
        ) from None


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(
        jsoncodec.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store", **(headers or {})},
    )


async def metrics(request: Request) -> Response:
    """Prometheus exposition; every worker's numbers when several run (multiprocess)."""
    reporting = reporting_of(request)
    if reporting.metrics is None:
        return _json(404, {"error": "metrics are off (reporting.metrics: false)"})
    body, content_type = reporting.exposition()
    return Response(body, headers={"content-type": content_type, "cache-control": "no-store"})


async def report(request: Request) -> Response:
    """The statistics behind `serving-proxy report` and the dashboard."""
    require_browser_admin(request)
    reporting = reporting_of(request)
    if reporting.stats is None:
        return _json(404, {"error": "statistics are off (reporting.stats: false)"})
    return _json(200, reporting.report())


async def dashboard(request: Request) -> Response:
    require_browser_admin(request)
    return Response(
        static_file("dashboard.html"),
        media_type="text/html; charset=utf-8",
        headers={"cache-control": STATIC_CACHE, **SECURITY_HEADERS},
    )


async def dashboard_script(request: Request) -> Response:
    require_browser_admin(request)
    return Response(
        static_file("dashboard.js"),
        media_type="text/javascript; charset=utf-8",
        headers={"cache-control": STATIC_CACHE, **SECURITY_HEADERS},
    )


async def dashboard_style(request: Request) -> Response:
    require_browser_admin(request)
    return Response(
        static_file("dashboard.css"),
        media_type="text/css; charset=utf-8",
        headers={"cache-control": STATIC_CACHE, **SECURITY_HEADERS},
    )


def routes() -> list[Route]:
    return [
        Route("/metrics", metrics, methods=["GET", "HEAD"]),
        Route("/admin/report", report, methods=["GET"]),
        Route("/admin/dashboard", dashboard, methods=["GET"]),
        Route("/admin/dashboard.js", dashboard_script, methods=["GET"]),
        Route("/admin/dashboard.css", dashboard_style, methods=["GET"]),
    ]
