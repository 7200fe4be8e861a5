"""Admin authentication: the one check for every admin endpoint and the dashboard.

- no `SERVING_PROXY_ADMIN_TOKEN` in the environment: 404, the same page as any unknown
  path, so an unconfigured proxy does not even show that an admin API exists;
- a credential in the query string: 400 (query strings end up in proxy and browser logs);
- no `Authorization: Bearer <token>`, or another token: 401 with `WWW-Authenticate`;
- the token is compared in constant time (`hmac.compare_digest`) and never logged: the
  access log records the path without its query, and no message here holds the token.

A browser cannot send a bearer token, so the dashboard also takes the token as the
password of HTTP Basic and hands it to the same check. Raises only; renders nothing.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.requests import Request

from proxy.config import ADMIN_TOKEN_ENV, ProxyConfig
from proxy.errors import AdminError, NoRoute
from proxy.runtime import Runtime
from proxy.telemetry.listener import METRICS_LISTENER

# Query parameters that look like a credential: refused whatever their value.
CREDENTIAL_PARAMS = frozenset(
    {"token", "access_token", "api_key", "apikey", "key", "auth", "authorization", "bearer"}
)
BEARER_REALM = 'Bearer realm="serving-proxy admin"'
BASIC_REALM = 'Basic realm="serving-proxy admin", charset="UTF-8"'
METRICS_REALM = 'Bearer realm="serving-proxy metrics"'


def _config(request: Request) -> ProxyConfig:
    runtime = getattr(request.state, "runtime", None)
    if isinstance(runtime, Runtime):
        return runtime.config
    config: ProxyConfig = request.app.state.config
    return config


def admin_token(config: ProxyConfig) -> str | None:
    secret = config.secrets.get(ADMIN_TOKEN_ENV)
    return None if secret is None else secret.get_secret_value()


def require_admin(request: Request) -> str:
    """Authorize an admin request; return who it is (the token's configured name).

    Raises:
        NoRoute: no admin token is configured (404, as for any unknown path).
        AdminError: a credential in the query string (400), or no or another token (401).
    """
    config = _config(request)
    token = admin_token(config)
    if token is None:
        raise NoRoute(f"no route for {request.url.path}")
    if any(name.lower() in CREDENTIAL_PARAMS for name in request.query_params):
        raise AdminError(
            400,
            "credentials_in_query",
            "credentials are refused in the query string; send Authorization: Bearer <token>",
        )
    require_bearer(request, token, "admin", BEARER_REALM)
    return config.admin.token_name


def require_bearer(request: Request, token: str, what: str, realm: str) -> None:
    """`Authorization: Bearer <token>`, compared in constant time; else 401.

    Raises:
        AdminError: no or another token (401, `WWW-Authenticate: <realm>`).
    """
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8"), token.encode("utf-8")
    ):
        raise AdminError(
            401,
            "unauthorized",
            f"a valid {what} bearer token is required",
            (("www-authenticate", realm),),
        )


def require_metrics(request: Request) -> None:
    """Authorize a `/metrics` scrape by `metrics:`.

    With `metrics.listen` set, `/metrics` is served on that listener only: on any other
    it is 404, as an unknown path. With `metrics.token_env` set, a scrape needs that
    token as a bearer token (the check admin requests use, against another token).

    Raises:
        NoRoute: `/metrics` lives on its own listener, and this is not it.
        AdminError: a token is configured and the request has no or another one (401).
    """
    config = _config(request)
    metrics = config.metrics
    if metrics.listen is not None and not request.scope.get(METRICS_LISTENER):
        raise NoRoute(f"no route for {request.url.path}")
    if metrics.token_env is not None:
        token = config.secrets[metrics.token_env].get_secret_value()
        require_bearer(request, token, "metrics", METRICS_REALM)


def bearer_from_basic(authorization: str) -> str | None:
    """`Bearer <password>` for `Basic base64(user:password)`, else None.

    A browser asks a person for a user name and password once and then sends them with
    the page's own requests. The password is the admin token; the user name means nothing.
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
    """`require_admin`, also accepting the token as a Basic password.

    A Basic credential is rewritten to the bearer form in a copy of the scope, so the
    check itself stays in one function. A refusal asks the browser for Basic.

    Raises:
        NoRoute, AdminError: as `require_admin` does.
    """
    bearer = bearer_from_basic(request.headers.get("authorization", ""))
    if bearer is not None:
        headers = [(k, v) for k, v in request.scope["headers"] if k != b"authorization"]
        headers.append((b"authorization", bearer.encode("utf-8")))
        request = Request({**request.scope, "headers": headers})
    try:
        require_admin(request)
    except AdminError as exc:
        if exc.status_code != 401:
            raise
        raise AdminError(
            401, exc.error, exc.message, (("www-authenticate", BASIC_REALM),)
        ) from None
