"""The simulator app: an imitation MLflow scoring server for tests, the demo and load runs.

An independent peer of the proxy: it reimplements just enough of each wire protocol
(protocols.md §2, §3, §5) and never imports `proxy.protocol`, so a bug there cannot hide
itself by agreeing with the simulator. Answers come from a recorded corpus case when one
matches, else from the toy model (`sim.scoring`). Fault knobs (`sim.faults`) make it slow,
failing or rude. What differs between the two servers is in `sim.legacy` and `sim.serverless`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, get_args

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from proxy import jsoncodec
from sim import legacy, serverless
from sim.dialect import Dialect, SimulatorKind
from sim.faults import Faults
from sim.replay import Replay
from sim.replies import JSON, Rejected, json_response, mlflow_error
from sim.scoring import predict

DIALECTS: Final[Mapping[str, Dialect]] = {"legacy": legacy, "serverless": serverless}

# uvicorn closes the transport, without writing a response, when an ASGI app returns
# anything but None (`run_asgi` in uvicorn/protocols/http/httptools_impl.py and h11_impl.py).
# It is the only way an app can end a request with no HTTP answer at all: an exception or a
# return without a response both become a 500. The string is what uvicorn's log line shows.
_DROPPED: Final = "simulator fault 'drop': connection closed without a response"
_DROP_SCOPE_KEY: Final = "serving_proxy.simulator.drop"
_CONTROL_PREFIX: Final = "/_sim/"
_ALL_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# What a 2.x server (or the Databricks front end) says for a status it chose (§6.2, §6.3).
_ERROR_CODES: Final[Mapping[int, str]] = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    429: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MALFORMED_BODY: Final = b'{"predictions": [0.0, 1.0,'


@dataclass(slots=True)
class SimulatorCounters:
    """What the simulator received, so tests can assert what the proxy sent upstream."""

    total: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    last_request: dict[str, Any] | None = None
    # The most requests handled at once, so tests can check a concurrency limit upstream.
    max_in_flight: int = 0
    # Requests answered 401 because `Simulator.accept_token` refused their bearer token.
    unauthorized: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_path": self.by_path,
            "last_request": self.last_request,
            "max_in_flight": self.max_in_flight,
            "unauthorized": self.unauthorized,
        }


class _NoResponse(Response):
    """Sends nothing: the request is ended by `SimulatorApp.__call__` instead."""

    def __init__(self) -> None:
        super().__init__(b"")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_DROP_SCOPE_KEY] = True


class SimulatorApp(Starlette):
    """Starlette, plus the one ASGI move Starlette has no word for: hanging up (see _DROPPED)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)
        if scope.get(_DROP_SCOPE_KEY):
            return _DROPPED  # type: ignore[return-value]


class Simulator:
    """The state behind one simulator app: faults, counters and the answer logic.

    Reach it in-process as `app.state.simulator` (e.g. to set `faults` directly).

    `accept_token`, set in-process, makes it check credentials as a workspace does: a
    request whose bearer token it refuses is answered 401 and not served (tests/oauth_server
    gives one that accepts only the tokens it issued, unexpired and unrevoked).
    """

    def __init__(self, dialect: Dialect, replay: Replay | None, faults: Faults, seed: int) -> None:
        self.kind: SimulatorKind = dialect.KIND
        self.dialect = dialect
        self.replay = replay
        self.faults = faults
        self.counters = SimulatorCounters()
        self.in_flight = 0
        self.accept_token: Callable[[str], bool] | None = None
        # Two streams, so changing the jitter does not move which requests fail.
        self._jitter_rng = random.Random(f"{seed}:jitter")
        self._fail_rng = random.Random(f"{seed}:fail")
        self._status_rng = random.Random(f"{seed}:status")

    @property
    def faults(self) -> Faults:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._faults = faults
        # `status_times` counts from when the faults were set.
        self._status_left = faults.status_times

    def _status_due(self, faults: Faults) -> bool:
        """Whether this request gets the `status` fault (`status_rate`, `status_times`)."""
        if faults.status_rate < 1.0 and self._status_rng.random() >= faults.status_rate:
            return False
        if self._status_left is not None:
            if self._status_left <= 0:
                return False
            self._status_left -= 1
        return True

    def _authorized(self, request: Request) -> bool:
        assert self.accept_token is not None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme == "Bearer" and bool(token) and self.accept_token(token)

    def _count(self, request: Request, body: bytes, delay_ms: float) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in request.headers.raw:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        path = request.url.path
        self.counters.total += 1
        self.counters.by_path[path] = self.counters.by_path.get(path, 0) + 1
        self.counters.last_request = {
            "method": request.method,
            "path": path,
            "query": request.url.query,
            "headers": headers,
            "body": body.decode("utf-8", errors="replace"),
            # the delay this request was given, so tests can check the jitter draws untimed
            "delay_ms": delay_ms,
        }

    async def handle(self, request: Request) -> Response:
        """Every request outside /_sim/: faults first, then the corpus, then the toy model;
        counted in flight from its arrival to its answer."""
        path = request.url.path
        if path.startswith(_CONTROL_PREFIX):
            return json_response({"error": f"no simulator control at {path}"}, 404)
        self.in_flight += 1
        counters = self.counters
        counters.max_in_flight = max(counters.max_in_flight, self.in_flight)
        try:
            return await self._serve(request, path)
        finally:
            self.in_flight -= 1

    async def _serve(self, request: Request, path: str) -> Response:
        body = await request.body()
        faults = self.faults
        delay_ms = faults.delay_ms
        if faults.jitter_ms:
            delay_ms += self._jitter_rng.uniform(0.0, faults.jitter_ms)
        self._count(request, body, delay_ms)
        if self.accept_token is not None and not self._authorized(request):
            self.counters.unauthorized += 1
            return mlflow_error(401, "CUSTOMER_UNAUTHORIZED", "Invalid access token.")
        if delay_ms:
            await anyio.sleep(delay_ms / 1000)
        if faults.drop:
            return _NoResponse()
        if faults.status is not None and self._status_due(faults):
            code = _ERROR_CODES.get(
                faults.status, "INTERNAL_ERROR" if faults.status >= 500 else "BAD_REQUEST"
            )
            answer = mlflow_error(faults.status, code, f"simulated fault: status {faults.status}")
            if faults.retry_after is not None:
                answer.headers["retry-after"] = faults.retry_after
            return answer
        if faults.fail_rate and self._fail_rng.random() < faults.fail_rate:
            return mlflow_error(500, "INTERNAL_ERROR", "simulated fault: fail_rate")
        if faults.malformed:
            return Response(_MALFORMED_BODY, media_type=JSON)
        content_type = request.headers.get("content-type")
        if self.replay is not None:
            recorded = self.replay.find(request.method, path, content_type, body)
            if recorded is not None:
                return Response(
                    recorded.body, status_code=recorded.status, headers=dict(recorded.headers)
                )
        return self._answer(request.method, path, content_type, body)

    def _answer(self, method: str, path: str, content_type: str | None, body: bytes) -> Response:
        dialect = self.dialect
        if dialect.is_invocations(path):
            if method != "POST":
                return dialect.method_not_allowed()
            try:
                rows = dialect.read_rows(content_type, body)
            except Rejected as rejected:
                return rejected.response
            return dialect.render(predict(rows))
        if method in ("GET", "HEAD") and path in ("/ping", "/health"):
            return Response(b"\n", media_type=JSON)
        if method in ("GET", "HEAD") and path == "/version":
            return Response(dialect.VERSION.encode(), media_type=JSON)
        return dialect.not_found()

    async def get_faults(self, request: Request) -> Response:
        return json_response(self.faults.to_json())

    async def put_faults(self, request: Request) -> Response:
        try:
            faults = Faults.from_json(jsoncodec.loads(await request.body()))
        except ValueError as exc:
            return mlflow_error(400, "BAD_REQUEST", f"invalid faults: {exc}")
        self.faults = faults  # validated in full before the swap: never half-applied
        return json_response(faults.to_json())

    async def get_stats(self, request: Request) -> Response:
        return Response(jsoncodec.dumps(self.counters.to_json()), media_type=JSON)

    async def reset(self, request: Request) -> Response:
        self.counters = SimulatorCounters()
        return Response(status_code=204)


def create_simulator_app(
    kind: SimulatorKind,
    *,
    corpus: Path | None = None,
    faults: Faults | None = None,
    seed: int = 0,
) -> Starlette:
    """An app that answers like an MLflow 1.30.1 (`legacy`) or 2.22.5 (`serverless`) server.

    Args:
        kind: which protocol to speak. `legacy` serves `POST /invocations` and
            `/model/<name>/<version>/invocations` with bare predictions (§5.1);
            `serverless` serves `POST` on any path ending in `/invocations` with
            `{"predictions": ...}` (§5.2).
        corpus: the corpus root (holding `cases/`); when given, requests equal to a recorded
            one (the `legacy` side, or `v2` then `v3`) get the recorded answer verbatim.
        faults: initial fault knobs; change them at run time with `PUT /_sim/faults`.
        seed: seeds the jitter and fail-rate draws.

    Control endpoints (not counted in the statistics): `GET`/`PUT /_sim/faults`,
    `GET /_sim/stats`, `POST /_sim/reset`.

    Raises:
        ValueError: an unknown kind, or `corpus` is not a corpus root.
    """
    if kind not in get_args(SimulatorKind):
        raise ValueError(f"kind must be 'legacy' or 'serverless', not {kind!r}")
    dialect = DIALECTS[kind]
    replay = None if corpus is None else Replay(corpus, dialect.REPLAY_SIDES)
    simulator = Simulator(dialect, replay, faults or Faults(), seed)
    app = SimulatorApp(
        routes=[
            Route("/_sim/faults", simulator.get_faults, methods=["GET"]),
            Route("/_sim/faults", simulator.put_faults, methods=["PUT"]),
            Route("/_sim/stats", simulator.get_stats, methods=["GET"]),
            Route("/_sim/reset", simulator.reset, methods=["POST"]),
            Route("/{path:path}", simulator.handle, methods=list(_ALL_METHODS)),
        ]
    )
    app.state.simulator = simulator
    return app
