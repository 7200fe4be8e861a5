"""The composition root: builds every live object of the proxy and assembles the ASGI app.

`build_runtime` builds the pools, the credentials, the cutover and the shadow mirror (and
its worker); `create_app` adds the telemetry hub, the routes, the middleware order and the
error boundary. Nothing else in the package builds these: modules receive what they use.

Middleware, outermost first (Envoy's filter chain, architecture §1.3):
RequestContextMiddleware (request id, record, access log exactly once) →
BodyLimitMiddleware (413 before buffering) → ScoringDispatch (the invocation URLs, straight
to their handlers: `proxy.dispatch`) → Starlette's own stack for everything else:
ServerErrorMiddleware (a bug becomes a legacy-shaped 500) → ExceptionMiddleware (renders
ProxyError) → router.

The proxy's layers stand outside Starlette's error layer (`ProxyApp`) so that a proxied
request pays for neither Starlette layer; `ScoringDispatch` renders a bug on its own path
with the same function Starlette's layer uses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from proxy import handlers, jsoncodec
from proxy.admin import api as admin
from proxy.admin import dashboard, fleet
from proxy.admin.views import gate_window_view
from proxy.asgi import ALL_METHODS, ReplyResponse, record_of
from proxy.budget import MemoryBudget, budget_bytes
from proxy.clientauth import build_client_auth
from proxy.config import ProxyConfig
from proxy.config.backends import replica_id_of
from proxy.credentials import build_credentials
from proxy.cutover import Cutover
from proxy.cutover.table import ModelState, UnknownModelError
from proxy.dispatch import ScoringDispatch
from proxy.errors import MethodNotAllowed, NoRoute, ProxyError, render, render_bug
from proxy.middleware import BodyLimitMiddleware, RequestContextMiddleware
from proxy.models import Reply
from proxy.probing import prober
from proxy.runtime import Runtime
from proxy.shadow.mirror import shadow_call, tolerances_of
from proxy.shadow.runner import Shadow
from proxy.shadow.worker import ShadowWorker
from proxy.tasks import TaskSet
from proxy.telemetry import accesslog
from proxy.telemetry.fleetstats import FleetStats
from proxy.telemetry.hub import Hub
from proxy.telemetry.listener import MetricsListener
from proxy.telemetry.metrics import Metrics
from proxy.telemetry.record import ExchangeRecord
from proxy.telemetry.stats import Rollout
from proxy.upstream.pools import Pools, UpstreamFactory

LOGGER = logging.getLogger("serving_proxy")


async def _render_proxy_error(request: Request, exc: Exception) -> Response:
    """The one place a local reply is rendered (architecture §1.4)."""
    assert isinstance(exc, ProxyError)
    return ReplyResponse(render(exc, record_of(request.scope)))


async def _render_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (no route, unrouted method) in 1.30.1's shapes (§6.5)."""
    assert isinstance(exc, HTTPException)
    error: ProxyError = (
        MethodNotAllowed(tuple(handlers.INVOCATION_ALLOW))
        if exc.status_code == 405
        else NoRoute(f"no route for {request.url.path}")
    )
    return await _render_proxy_error(request, error)


async def _render_bug(request: Request, exc: Exception) -> Response:
    """An unhandled exception: 500 without a traceback for the client (§6.5 bug)."""
    return ReplyResponse(render_bug(exc, record_of(request.scope)))


async def healthz(request: Request) -> Response:
    """Liveness: the process serves HTTP."""
    return ReplyResponse(Reply(200, b'{"status":"ok"}'))


async def readyz(request: Request) -> Response:
    """Readiness: the lifespan has built the upstream pools. The detail names the replica
    that answered and says whether it is `stale`: cut off from the state store, serving
    its last known table. A stale replica stays ready: it serves as well as it did a
    moment ago, and if every replica lost the store at once (the store is the one that
    failed), taking them all out of the Service would turn a store outage into a full one.
    """
    runtime: Runtime | None = getattr(request.state, "runtime", None)
    if runtime is None:
        return ReplyResponse(Reply(503, b'{"status":"starting"}'))
    detail = {
        "status": "ready",
        "replica_id": runtime.replica_id,
        "stale": runtime.cutover.stale,
    }
    return ReplyResponse(Reply(200, jsoncodec.dumps(detail)))


def routes() -> list[Route]:
    """The app's routes but the scoring URLs, which `ScoringDispatch` answers first."""
    legacy = "/model/{name}/{version}"
    return [
        Route("/invocations", handlers.root_invocations, methods=ALL_METHODS),
        *(
            Route(f"{prefix}/{word}", handlers.auxiliary, methods=ALL_METHODS)
            for word in handlers.AUX_BODIES
            for prefix in ("", legacy)
        ),
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
    ]


class ProxyApp(Starlette):
    """Starlette with the proxy's own middleware outside Starlette's error layer.

    Starlette puts user middleware inside its `ServerErrorMiddleware`; on the hot path
    that layer's wrapper of every `send` costs more than it gives, since `ScoringDispatch`
    renders its own bugs. Everything Starlette does for the other routes is unchanged.
    """

    def __init__(self, *, outer: list[Middleware], **kwargs: Any) -> None:
        self.outer = outer
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        for cls, args, options in reversed(self.outer):
            app = cls(app, *args, **options)
        return app


def window_publisher(config: ProxyConfig, replica_id: str) -> str:
    """The name this process publishes its gate-window slots under: the replica's id, and
    with several uvicorn workers the worker's pid too (`#` is never part of a replica id),
    since each worker counts its own traffic."""
    return replica_id if config.server.workers <= 1 else f"{replica_id}#{os.getpid()}"


def build_runtime(
    config: ProxyConfig,
    upstream_factory: UpstreamFactory | None = None,
    replica_id: str | None = None,
) -> Runtime:
    """Every live object a request reaches, wired together: the pools and credentials for
    the backend calls, the cutover, and the shadow mirror (its worker process started on
    the first job under `shadow.isolation: process`). `replica_id`: this replica's id
    (default: resolved from the config and the environment)."""
    if replica_id is None:
        replica_id = replica_id_of(config.server, config.listen, os.environ)
    pools = Pools.build(config, upstream_factory)
    credentials = build_credentials(config)
    # The rollout's readiness probe goes the clients' way: these pools and credentials.
    # The workers of one replica share its id; in the store (gate windows, the lease
    # holder, heartbeat records) each worker is a member of its own.
    cutover = Cutover(
        config, probe=prober(pools, credentials), replica=window_publisher(config, replica_id)
    )
    worker = ShadowWorker(config) if config.shadow.isolation == "process" else None
    shadow = Shadow(
        config.shadow, shadow_call(pools, credentials), tolerances_of(config), worker=worker
    )
    # The rollout gates judge shadow calls as well as the clients' own, and the fleet's
    # window keeps the shadow results and the last mismatches.
    shadow.on_call.append(cutover.count_call)
    shadow.on_result.append(cutover.count_shadow)
    shadow.on_mismatch.append(lambda model, kept: cutover.count_mismatch(model, kept.to_json()))
    runtime = Runtime(config, pools, credentials, cutover, shadow, replica_id)
    # The heartbeat says how many requests this replica has in flight.
    cutover.presence.in_flight = lambda: runtime.in_flight
    return runtime


def follow(hub: Hub, runtime: Runtime) -> None:
    """Report the weights and rollout states the cutover holds, mark its rollbacks, and
    count the shadow results and the readiness probes."""
    cutover = runtime.cutover

    def source(model: str) -> Rollout:
        try:
            return Rollout(cutover.weight(model), cutover.rollout_status(model) or "manual")
        except UnknownModelError:
            return Rollout()

    def changed(model: str, state: ModelState, action: str) -> None:
        hub.note_rollout(model, "rollback" if action == "rollback" else None)

    hub.set_rollout_source(source)
    # The report and the dashboard show the gate windows over the fleet, as status does.
    hub.set_fleet_source(partial(gate_window_view, cutover), cutover.windows.read_all)
    cutover.on_probe.append(lambda model, result: hub.probe_result(model, result.ok))
    for token in runtime.credentials.refreshing():
        token.on_fetch.append(hub.token_fetch)
    cutover.on_change.append(changed)
    runtime.shadow.on_result.append(hub.shadow_result)


def share_stats(hub: Hub, runtime: Runtime) -> FleetStats | None:
    """Share this process's report statistics with the other replicas through the state
    store, and merge theirs into its report (None: statistics are off)."""
    stats = hub.stats
    if stats is None:
        return None
    sharing = FleetStats(
        runtime.cutover.store,
        runtime.cutover.replica_id,
        lambda: stats.export(hub.clock()),
        stats.settings.slot_s,
    )
    hub.share_stats(sharing)
    return sharing


def create_app(
    config: ProxyConfig,
    *,
    upstream_factory: UpstreamFactory | None = None,
    on_complete: Callable[[ExchangeRecord], None] | None = None,
    registry: CollectorRegistry | None = None,
) -> Starlette:
    """Build the proxy for a validated config.

    Args:
        config: the validated, frozen config.
        upstream_factory: builds one `Upstream` per backend pool (default: the one
            `server.upstream_client` names); benchmarks pass `HttpxUpstream`.
        on_complete: called with every finished record (default: the access log); the
            metrics and statistics see every record either way.
        registry: the Prometheus registry for this app's collectors (default: a fresh one).
    """
    reporting = Hub.build(config, registry=registry, environ=os.environ)
    # Built with the app: a tokens file that cannot be read stops start-up here.
    client_auth = build_client_auth(config)
    # Resolved once: the runtime owns it; the access log below names the same value.
    replica_id = replica_id_of(config.server, config.listen, os.environ)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        runtime = build_runtime(config, upstream_factory, replica_id)
        metrics = reporting.metrics
        if metrics is not None and not metrics.follow_in_flight(lambda: runtime.in_flight):
            runtime.on_in_flight = reporting.in_flight
        # Weights, rollout states, rollbacks and shadow parity are reported as the cutover
        # and the mirror of this runtime tell them.
        follow(reporting, runtime)
        listen = config.metrics.listen
        listener = None
        if listen is not None and reporting.metrics is not None:
            listener = MetricsListener(app, listen, shared=config.server.workers > 1)
        sharing = share_stats(reporting, runtime)
        background = TaskSet()
        try:
            # Load the cutover state (a bad `state:` stops start-up) and follow it.
            await runtime.start()
            # Every replica labels a client alike: the deployment's secret keys the hash.
            await reporting.labels.adopt(runtime.cutover.store)
            if sharing is not None:
                background.spawn(sharing.run(), name="report-statistics")
            if listener is not None:
                await listener.start()
            yield {"runtime": runtime}
        finally:
            if listener is not None:
                await listener.aclose()
            await background.aclose()
            if sharing is not None:
                await sharing.aclose()
            await runtime.aclose()
            if client_auth is not None:
                await client_auth.aclose()
            if reporting.metrics is not None:
                Metrics.mark_process_dead(reporting.metrics.multiprocess_dir)
            reporting.close()

    def access_log(record: ExchangeRecord) -> None:
        accesslog.emit(record, enabled=config.logging.access_log, replica_id=replica_id)

    sink = on_complete or access_log

    def complete(record: ExchangeRecord) -> None:
        # The figures first, the access line last: a reader who sees a request's line
        # knows its metrics and statistics are counted too (the reply itself may have
        # reached the client a moment earlier: proxy/server.py writes it at once).
        try:
            reporting.finish(record)
        except Exception:
            # A bug in the figures must not turn a request already answered into a server
            # error, nor cost its access line; it is logged with its traceback instead.
            LOGGER.exception("reporting failed for request %s", record.request_id)
        sink(record)

    app = ProxyApp(
        routes=[*routes(), *dashboard.routes(), *admin.routes(), *fleet.routes()],
        outer=[
            Middleware(
                RequestContextMiddleware,
                on_complete=complete,
                server_timing=config.reporting.server_timing,
                client_key=config.client_key,
                labels=reporting.labels,
                trusted_proxies=config.server.trusted_proxies,
                client_auth=client_auth,
            ),
            Middleware(
                BodyLimitMiddleware,
                max_body_bytes=config.limits.max_body_bytes,
                # Read once here, at the edge: the cgroup's or the machine's memory.
                budget=MemoryBudget(budget_bytes(config.limits), config.limits.memory_wait_s),
            ),
            Middleware(ScoringDispatch),
        ],
        exception_handlers={
            ProxyError: _render_proxy_error,
            HTTPException: _render_http_exception,
            Exception: _render_bug,
        },
        lifespan=lifespan,
    )
    # Read by the reporting endpoints (proxy.admin.dashboard); built per app, never global.
    app.state.config = config
    app.state.reporting = reporting
    return app


def app_from_env() -> Starlette:
    """The app factory each uvicorn worker calls when `server.workers` > 1."""
    from proxy.config import load_config
    from proxy.server import tune_memory

    app = create_app(load_config(os.environ["SERVING_PROXY_CONFIG"], os.environ))
    tune_memory()  # in each worker process, as `serve` does for a single one
    return app
