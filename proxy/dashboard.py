"""The reporting endpoints: `GET /metrics`, and behind the admin token `GET /admin/report`
(the JSON the `report` command and the dashboard read) and `GET /admin/dashboard` (one
HTML page and its script, served from `proxy/static`, no CDN, no build step).

Shell only: every figure comes from `proxy.reporting`; nothing here computes one.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import jsoncodec
from proxy.config import ADMIN_TOKEN_ENV, ProxyConfig
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


def _config(request: Request) -> ProxyConfig:
    config: ProxyConfig = request.app.state.config
    return config


def reporting_of(request: Request) -> Reporting:
    reporting: Reporting = request.app.state.reporting
    return reporting


def presented_token(authorization: str) -> str | None:
    """The token of `Bearer <token>`, or the password of `Basic base64(user:token)`.

    Basic is accepted so that a person can open the dashboard in a browser, which asks
    for it once and then sends it with the page's own requests.
    """
    scheme, _, value = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


def admin_refusal(request: Request, *, browser: bool = False) -> Response | None:
    """None when the request carries the admin token, else the answer to send.

    Stands in for issue 3's `proxy.admin` check until that lands (same token, same env):
    constant-time comparison, never logged. Without a configured token the admin API is
    off (403), so a proxy is never open by accident.
    """
    secret = _config(request).secrets.get(ADMIN_TOKEN_ENV)
    if secret is None:
        return _json(403, {"error": f"the admin API is off: set {ADMIN_TOKEN_ENV}"})
    token = presented_token(request.headers.get("authorization", ""))
    if token is not None and hmac.compare_digest(
        token.encode("utf-8"), secret.get_secret_value().encode("utf-8")
    ):
        return None
    challenge = REALM if browser else 'Bearer realm="serving-proxy admin"'
    return _json(401, {"error": "admin token required"}, {"www-authenticate": challenge})


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
    refusal = admin_refusal(request, browser=True)
    if refusal is not None:
        return refusal
    reporting = reporting_of(request)
    if reporting.stats is None:
        return _json(404, {"error": "statistics are off (reporting.stats: false)"})
    return _json(200, reporting.report())


async def dashboard(request: Request) -> Response:
    refusal = admin_refusal(request, browser=True)
    if refusal is not None:
        return refusal
    return Response(
        static_file("dashboard.html"),
        media_type="text/html; charset=utf-8",
        headers={"cache-control": STATIC_CACHE, **SECURITY_HEADERS},
    )


async def dashboard_script(request: Request) -> Response:
    refusal = admin_refusal(request, browser=True)
    if refusal is not None:
        return refusal
    return Response(
        static_file("dashboard.js"),
        media_type="text/javascript; charset=utf-8",
        headers={"cache-control": STATIC_CACHE, **SECURITY_HEADERS},
    )


async def dashboard_style(request: Request) -> Response:
    refusal = admin_refusal(request, browser=True)
    if refusal is not None:
        return refusal
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
