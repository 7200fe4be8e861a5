"""The admin API under `/admin/` on the proxy's own port: read and change the cutover.

Shell: parses requests, calls the cutover and the shadow, replies with JSON views
(`proxy.admin.views`). Every endpoint first calls `auth.require_admin`; every refusal is
an `AdminError` raised for the app's one error renderer, never a reply built here.

    GET  /admin/models                      every model: weights, rollout, parity
    GET  /admin/models/{model}              one model, with its last mismatches (the
                                            gate window, parity and mismatches are
                                            the fleet's, per replica under `replicas`)
    PUT  /admin/models/{model}              {"serverless_percent": 25, "reason": "..."}
    POST /admin/models/{model}/promote      next rollout step now (also pause, resume,
                                            rollback; body {"reason": ..., "to": ...})
    GET  /admin/models/{model}/history      the audit log of one model, newest first
    GET  /admin/audit                       the audit log of every model

A change that raises a model's serverless weight (`PUT` with a higher
`serverless_percent`, or `promote`) first sends the model's `rollout.probe`, when it has
one: on failure it is refused with 409 `probe_failed` and the probe's note, unless the
body says `"force": true`; the reply's `probe` says how the probe went and whether the
change was forced. Lowering a weight, pausing and rolling back never probe.

Every view says `persisted`: whether the store holds what this replica serves. A rollback
or pause takes effect here even while the state store is out: it answers 202 with
`"persisted": false` then, and is stored when the store is back. Any other change, and the
audit log, answer 503 `state_unavailable` meanwhile; reads of the live state answer 200.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import jsoncodec
from proxy.admin.auth import require_admin
from proxy.admin.views import model_view
from proxy.asgi import ALL_METHODS
from proxy.cutover import Cutover
from proxy.cutover.commands import ChangeError, parse_change
from proxy.cutover.rollout import next_step
from proxy.cutover.store import StateError
from proxy.cutover.table import UnknownModelError
from proxy.errors import JSON, AdminError
from proxy.runtime import Runtime

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MOVES = ("promote", "pause", "resume", "rollback")
# ASCII digits only, and few of them: `str.isdigit` and `int` also take "²" or "٣", and an
# unbounded run of digits costs quadratic time to convert.
LIMIT_RE = re.compile(r"[0-9]{1,4}")
# 202: a change applied here that the store has not taken yet (in force on this replica).
Success = Literal[200, 202]


def _json(obj: Any, status: Success = 200) -> Response:
    """A success reply; refusals are raised as `AdminError`, never built here."""
    return Response(jsoncodec.dumps(obj), status_code=status, media_type=JSON)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.state.runtime
    return runtime


def _model_name(cutover: Cutover, request: Request) -> str:
    model: str = request.path_params["model"]
    if model not in cutover.models():
        raise AdminError(404, "unknown_model", f"no model '{model}' is configured")
    return model


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", str(DEFAULT_LIMIT))
    if LIMIT_RE.fullmatch(raw) is None or not 1 <= int(raw) <= MAX_LIMIT:
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


def _force(data: Any) -> tuple[Any, bool]:
    """The body without its `force` flag, and the flag (a JSON boolean, default false)."""
    if not isinstance(data, dict) or "force" not in data:
        return data, False
    rest = {k: v for k, v in data.items() if k != "force"}
    force = data["force"]
    if not isinstance(force, bool):
        raise AdminError(400, "bad_request", "force must be true or false")
    return rest, force


async def _probe_first(cutover: Cutover, name: str, target: float | None, force: bool) -> Any:
    """Before the weight goes up to `target`, the model's probe: its result for the reply
    (None: nothing to probe), or a 409 when it failed and the change is not forced."""
    current = cutover.weight(name)
    if target is None or target <= current:
        return None
    result = await _change(cutover.probe(name))
    if result is None:
        return None
    if not result.ok and not force:
        raise AdminError(
            409,
            "probe_failed",
            f"{result.note}; {name} stays at {current:g}% "
            '(send "force": true, or --force, to raise it anyway)',
        )
    return {**result.to_json(), "forced": not result.ok}


async def list_models(request: Request) -> Response:
    require_admin(request)
    _method(request, "GET")
    runtime = _runtime(request)
    for name in runtime.cutover.models():
        await runtime.cutover.read_window(name)
    return _json(
        {"models": [model_view(runtime, m, mismatches=False) for m in runtime.cutover.models()]}
    )


async def model(request: Request) -> Response:
    actor = require_admin(request)
    _method(request, "GET", "PUT")
    runtime = _runtime(request)
    name = _model_name(runtime.cutover, request)
    probe = None
    if request.method == "PUT":
        data, force = _force(await _body(request))
        try:
            change = parse_change(data)
        except ChangeError as exc:
            raise AdminError(400, "bad_change", str(exc)) from None
        probe = await _probe_first(runtime.cutover, name, change.serverless_percent, force)
        await _change(runtime.cutover.set_weights(name, change, actor))
    await runtime.cutover.read_window(name)
    view = model_view(runtime, name, mismatches=True)
    if probe is not None:
        view["probe"] = probe
    return _json(view)


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
    if action == "promote":
        allowed.add("force")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise AdminError(400, "bad_request", f"unknown field: {unknown[0]}")
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise AdminError(400, "bad_request", "reason must be a string")
    cutover = runtime.cutover
    probe = None
    if action == "rollback":
        to = data.get("to")
        if to not in (None, "zero", "last_good"):
            raise AdminError(400, "bad_request", "to must be 'zero' or 'last_good'")
        await _change(cutover.rollback(name, actor, reason, to))
    else:
        if action == "promote":
            _, force = _force(data)
            policy = runtime.config.models[name].rollout
            step = None if policy is None else next_step(policy.steps, cutover.weight(name))
            probe = await _probe_first(cutover, name, step, force)
        await _change(getattr(cutover, action)(name, actor, reason))
    await cutover.read_window(name)
    view = model_view(runtime, name, mismatches=False)
    if probe is not None:
        view["probe"] = probe
    return _json(view, 200 if view["persisted"] else 202)


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
