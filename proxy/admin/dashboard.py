"""The reporting endpoints: `GET /metrics`, and behind the admin token `GET /admin/report`
(the JSON the `report` command and the dashboard read) and `GET /admin/dashboard` (one
HTML page and its script, served from `proxy/admin/static`, no CDN, no build step).

Shell only: every figure comes from `proxy.telemetry.hub`; nothing here computes one, and no
error reply is built here (refusals are raised as `AdminError`).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import jsoncodec
from proxy.admin.auth import require_browser_admin, require_metrics
from proxy.errors import JSON, AdminError
from proxy.telemetry.hub import Hub

# The page and its script are static; the data is fetched, so they may be cached briefly.
STATIC_CACHE = "private, max-age=60"
SECURITY_HEADERS = {
    # Everything the page needs comes from the proxy itself, so it works offline.
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
# The figures change with every request: neither the report nor its refusals are cached.
NO_STORE = (("cache-control", "no-store"),)
# URL path -> (file in static/, media type).
STATIC_FILES = {
    "/admin/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
    "/admin/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/admin/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


@cache
def static_file(name: str) -> bytes:
    """A file of `static/` beside this module, read once (it ships inside the wheel)."""
    return resources.files("proxy.admin").joinpath("static", name).read_bytes()


def reporting_of(request: Request) -> Hub:
    reporting: Hub = request.app.state.reporting
    return reporting


def _json(body: object) -> Response:
    """A success reply; refusals are raised as `AdminError`."""
    return Response(jsoncodec.dumps(body), media_type=JSON, headers=dict(NO_STORE))


async def metrics(request: Request) -> Response:
    """Prometheus exposition; every worker's numbers when several run (multiprocess).
    Who may scrape is `metrics:`'s to say (`require_metrics`)."""
    require_metrics(request)
    reporting = reporting_of(request)
    if reporting.metrics is None:
        raise AdminError(404, "metrics_off", "metrics are off (reporting.metrics: false)", NO_STORE)
    body, content_type = reporting.exposition()
    return Response(body, headers={"content-type": content_type, "cache-control": "no-store"})


async def report(request: Request) -> Response:
    """The statistics behind `serving-proxy report` and the dashboard."""
    require_browser_admin(request)
    reporting = reporting_of(request)
    if reporting.stats is None:
        raise AdminError(404, "stats_off", "statistics are off (reporting.stats: false)", NO_STORE)
    await reporting.refresh_fleet()
    return _json(reporting.report())


async def dashboard(request: Request) -> Response:
    """The page, its script or its style, by the request's path."""
    require_browser_admin(request)
    name, media_type = STATIC_FILES[request.url.path]
    return Response(
        static_file(name),
        media_type=media_type,
        headers={"cache-control": STATIC_CACHE, **SECURITY_HEADERS},
    )


def routes() -> list[Route]:
    return [
        Route("/metrics", metrics, methods=["GET", "HEAD"]),
        Route("/admin/report", report, methods=["GET"]),
        *(Route(path, dashboard, methods=["GET"]) for path in STATIC_FILES),
    ]
