"""The admin API under `/admin/` on the proxy's own port: read and change the cutover.

Shell: parses requests, calls `cutover.py` and `shadow.py`, renders JSON. Authorization is
one function, `require_admin`, for every admin endpoint (and the reports' dashboard):

- no `SERVING_PROXY_ADMIN_TOKEN` in the environment: 404, the same page as any unknown
  path, so an unconfigured proxy does not even show that an admin API exists;
- a credential in the query string: 400 (query strings end up in proxy and browser logs);
- no `Authorization: Bearer <token>`, or another token: 401 with `WWW-Authenticate`;
- the token is compared in constant time (`hmac.compare_digest`) and never logged: the
  access log records the path without its query, and no message here holds the token.

    GET  /admin/models                      every model: weights, rollout, parity
    GET  /admin/models/{model}              one model, with its last mismatches
    PUT  /admin/models/{model}              {"serverless_percent": 25, "reason": "..."}
    POST /admin/models/{model}/promote      next rollout step now (also pause, resume,
                                            rollback; body {"reason": ..., "to": ...})
    GET  /admin/models/{model}/history      the audit log of one model, newest first
    GET  /admin/audit                       the audit log of every model
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import jsoncodec
from proxy.config import ADMIN_TOKEN_ENV, ProxyConfig
from proxy.cutover import ChangeError, Cutover, UnknownModelError, parse_change
from proxy.errors import JSON, NoRoute, ProxyError
from proxy.models import Reply
from proxy.runtime import Runtime
from proxy.state import StateError

# Query parameters that look like a credential: refused whatever their value.
CREDENTIAL_PARAMS = frozenset(
    {"token", "access_token", "api_key", "apikey", "key", "auth", "authorization", "bearer"}
)
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MOVES = ("promote", "pause", "resume", "rollback")
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class AdminError(ProxyError):
    """An admin request refused: JSON `{"error": ..., "message": ...}` with its status."""

    flag = "ADM"

    def __init__(
        self, status: int, error: str, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.status_code = status
        self.error = error
        self.headers = headers

    def to_reply(self) -> Reply:
        body = jsoncodec.dumps({"error": self.error, "message": self.message})
        return Reply(self.status_code, body, JSON, self.headers)


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
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8"), token.encode("utf-8")
    ):
        raise AdminError(
            401,
            "unauthorized",
            "a valid admin bearer token is required",
            (("www-authenticate", 'Bearer realm="serving-proxy admin"'),),
        )
    return config.admin.token_name


def _json(obj: Any, status: int = 200) -> Response:
    return Response(jsoncodec.dumps(obj), status_code=status, media_type=JSON)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.state.runtime
    return runtime


def _model_view(runtime: Runtime, model: str, *, mismatches: bool) -> dict[str, Any]:
    view = runtime.cutover.view(model)
    view["parity"] = runtime.shadow.parity(model).to_json()
    # Process-wide: every model's shadow calls share these slots.
    view["shadow"] = {
        "in_flight": runtime.shadow.in_flight,
        "max_concurrency": runtime.config.shadow.max_concurrency,
        "isolation": runtime.config.shadow.isolation,
        # The shadow worker process, once the first shadow call has started it.
        "worker_pid": runtime.shadow.worker_pid,
    }
    if mismatches:
        view["mismatches"] = [m.to_json() for m in runtime.shadow.mismatches(model)]
    return view


def _model_name(cutover: Cutover, request: Request) -> str:
    model: str = request.path_params["model"]
    if model not in cutover.models():
        raise AdminError(404, "unknown_model", f"no model '{model}' is configured")
    return model


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise AdminError(400, "bad_request", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return jsoncodec.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AdminError(400, "bad_request", "the body must be JSON") from None


async def _change(coro: Any) -> Any:
    """Run a cutover change, mapping its refusals to admin replies."""
    try:
        return await coro
    except ChangeError as exc:
        raise AdminError(400, "bad_change", str(exc)) from None
    except UnknownModelError as exc:
        raise AdminError(404, "unknown_model", f"no model {exc} is configured") from None
    except StateError as exc:
        raise AdminError(503, "state_unavailable", str(exc)) from None


async def list_models(request: Request) -> Response:
    require_admin(request)
    _method(request, "GET")
    runtime = _runtime(request)
    return _json(
        {"models": [_model_view(runtime, m, mismatches=False) for m in runtime.cutover.models()]}
    )


async def model(request: Request) -> Response:
    actor = require_admin(request)
    _method(request, "GET", "PUT")
    runtime = _runtime(request)
    name = _model_name(runtime.cutover, request)
    if request.method == "PUT":
        data = await _body(request)
        try:
            change = parse_change(data)
        except ChangeError as exc:
            raise AdminError(400, "bad_change", str(exc)) from None
        await _change(runtime.cutover.set_weights(name, change, actor))
    return _json(_model_view(runtime, name, mismatches=True))


async def move(request: Request) -> Response:
    actor = require_admin(request)
    _method(request, "POST")
    runtime = _runtime(request)
    name = _model_name(runtime.cutover, request)
    action = request.url.path.rsplit("/", 1)[1]
    data = await _body(request)
    if not isinstance(data, dict):
        raise AdminError(400, "bad_request", "the body must be a JSON object")
    allowed = {"reason", "to"} if action == "rollback" else {"reason"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise AdminError(400, "bad_request", f"unknown field: {unknown[0]}")
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise AdminError(400, "bad_request", "reason must be a string")
    cutover = runtime.cutover
    if action == "rollback":
        to = data.get("to")
        if to not in (None, "zero", "last_good"):
            raise AdminError(400, "bad_request", "to must be 'zero' or 'last_good'")
        await _change(cutover.rollback(name, actor, reason, to))
    else:
        await _change(getattr(cutover, action)(name, actor, reason))
    return _json(_model_view(runtime, name, mismatches=False))


async def history(request: Request) -> Response:
    require_admin(request)
    _method(request, "GET")
    runtime = _runtime(request)
    name = _model_name(runtime.cutover, request)
    entries = await _change(runtime.cutover.history(name, _limit(request)))
    return _json({"model": name, "history": [e.to_json() for e in entries]})


async def audit(request: Request) -> Response:
    require_admin(request)
    _method(request, "GET")
    runtime = _runtime(request)
    entries = await _change(runtime.cutover.store.audit(None, _limit(request)))
    return _json({"audit": [e.to_json() for e in entries]})


def _method(request: Request, *allowed: str) -> None:
    if request.method not in allowed:
        raise AdminError(
            405,
            "method_not_allowed",
            f"use {' or '.join(allowed)}",
            (("allow", ", ".join(allowed)),),
        )


def routes() -> list[Route]:
    """Every admin route takes every method, so that without a token each answers 404
    (never a 405 that would show the route exists); the handlers check the method after
    `require_admin`."""
    return [
        Route("/admin/models", list_models, methods=ALL_METHODS),
        Route("/admin/models/{model}", model, methods=ALL_METHODS),
        *(Route(f"/admin/models/{{model}}/{word}", move, methods=ALL_METHODS) for word in MOVES),
        Route("/admin/models/{model}/history", history, methods=ALL_METHODS),
        Route("/admin/audit", audit, methods=ALL_METHODS),
    ]
