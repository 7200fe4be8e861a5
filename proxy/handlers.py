"""The request handlers: thin glue that runs the named steps in order (architecture §1.3).

scope → `Inbound` → `cutover.decide` → `exchange.send` → `shadow.submit`. Every decision
is a pure function elsewhere and the backend call is `exchange`'s; this module only reads
the request, calls them in order and writes what it learns onto the record.

The scoring handlers take the ASGI scope and `receive` and return a `Reply`:
`proxy.dispatch` calls them straight, ahead of Starlette's router, because on the hot path
the router, its exception layers and its `Request` object cost more than the translation
does (benchmarks/overhead.py). The rare endpoints stay ordinary Starlette ones.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from proxy import exchange
from proxy import headers as header_rules
from proxy.asgi import ReplyResponse, client_host, query_of, raw_path_of, read_body, record_of
from proxy.cutover import Cutover
from proxy.errors import JSON, MethodNotAllowed, NoRoute, ProxyError
from proxy.models import Backend, ModelRef, Reply, V2Request, first_header
from proxy.protocol import paths
from proxy.resilience import REAUTHORIZED, failure_status
from proxy.runtime import Runtime
from proxy.shadow.job import ShadowJob
from proxy.shadow.mirror import decoded_body
from proxy.telemetry.record import ExchangeRecord
from proxy.telemetry.recorder import RecordedAnswer, record_sample

INVOCATION_ALLOW = ("OPTIONS", "POST")
AUX_ALLOW = ("GET", "HEAD", "OPTIONS")
# §1.3: the recorded 1.30.1 bodies of the scoring server's own endpoints.
AUX_BODIES = {"ping": b"\n", "health": b"\n", "version": b"1.30.1"}
NEW_STYLE_405 = Reply(405, b'{"detail":"Method Not Allowed"}', JSON, (("allow", "POST"),))


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.state.runtime
    return runtime


def _context(scope: Scope) -> tuple[Runtime, ExchangeRecord]:
    """The app's runtime (lifespan state) and the record the middleware opened."""
    state = scope["state"]
    return state["runtime"], state["record"]


def method_gate(method: str, allow: tuple[str, ...], wanted: str) -> Reply | None:
    """§6.5: OPTIONS answers 200 with `Allow`; any other method but `wanted` is a 405.

    Returns:
        None for `wanted`, the OPTIONS reply, or raises `MethodNotAllowed`.
    """
    if method == wanted:
        return None
    if method == "OPTIONS":
        return Reply(200, b"", "text/html; charset=utf-8", (("allow", ", ".join(allow)),))
    raise MethodNotAllowed(allow)


def _inbound(scope: Scope, ref: ModelRef, body: bytes, request_id: str) -> exchange.Inbound:
    return exchange.Inbound(
        ref,
        scope["path"],
        raw_path_of(scope),
        query_of(scope),
        client_host(scope),
        header_rules.decode(scope["headers"]),
        body,
        request_id,
    )


def _record_payload(runtime: Runtime) -> exchange.OnTranslated | None:
    """Payload sampling (`recording:`), told of each translated request; None when off."""
    config = runtime.config.recording
    if not config.enabled:
        return None

    def record(inbound: exchange.Inbound, v2: V2Request) -> None:
        record_sample(
            config,
            model=inbound.ref.name,
            version=inbound.ref.version,
            path=inbound.path,
            content_type=inbound.header("content-type"),
            body=inbound.body,
            v2_content_type=v2.content_type,
            v2_body=v2.body,
        )

    return record


def _record_answer(runtime: Runtime, inbound: exchange.Inbound, out: Reply) -> None:
    """`recording.answers`: a request the legacy backend answered, with its answer (a pair
    for `serving-proxy verify`), sampled as any other."""

    def answer() -> RecordedAnswer:
        content_type = out.content_type or first_header(out.headers, "content-type")
        return RecordedAnswer(out.status, content_type, decoded_body(out))

    record_sample(
        runtime.config.recording,
        model=inbound.ref.name,
        version=inbound.ref.version,
        path=inbound.path,
        content_type=inbound.header("content-type"),
        body=inbound.body,
        answer=answer,
        request_id=inbound.request_id,
    )


def _count_retried(cutover: Cutover, model: str, primary: Backend, record: ExchangeRecord) -> None:
    """Each retried serverless attempt is a failure the rollout's error gate must see:
    counted once per request, a failing endpoint behind retries would give the gates a
    sample only every few seconds, too few to roll back within their window. With no
    time of its own (`None`), it does not move the latency gate. A legacy primary's
    retries are legacy's: no gate counts them (a spill-back's primary is serverless)."""
    if primary is Backend.LEGACY:
        return
    for reason in record.retries:
        if reason == REAUTHORIZED:
            continue
        cutover.count_call(model, Backend.SERVERLESS, failure_status(reason), None)


async def legacy_invocations(scope: Scope, receive: Receive, name: str, segment: str) -> Reply:
    """`POST /model/<name>/<version-or-stage>/invocations` (§1.2, §4, §5, §6.4).

    The cutover decides the backend per client; once the client's answer is ready, a
    shadowed request is handed to the mirror and the answer goes out unchanged.
    """
    gate = method_gate(scope["method"], INVOCATION_ALLOW, "POST")
    if gate is not None:
        return gate
    runtime, record = _context(scope)
    ref = runtime.resolve_legacy(name, segment)
    record.model, record.version = ref.name, ref.version
    # The body first, then a place: a slow upload holds no place a whole request could use
    # (its memory is bounded by the body budget, `BodyLimitMiddleware`).
    body = await read_body(receive)
    # The model's place first (queued past its `max_in_flight`), then the proxy's: a queued
    # request holds no proxy-wide place. A model without a limit has no gate and no await.
    model_gate = runtime.gates.get(ref.name)
    with runtime.admission if model_gate is None else await model_gate.admit(record):
        inbound = _inbound(scope, ref, body, record.request_id)
        cutover = runtime.cutover
        decision = cutover.decide(ref, scope["state"].get("client_key"), inbound.headers)
        record.bucket, record.route_reason = decision.bucket, decision.reason
        primary = decision.primary
        t0 = time.perf_counter()
        try:
            out = await exchange.send(
                inbound,
                primary,
                runtime.pools,
                runtime.credentials,
                record,
                fallback=True,
                on_translated=_record_payload(runtime),
            )
        except ProxyError as exc:
            _count_retried(cutover, ref.name, primary, record)
            cutover.count_call(ref.name, primary, exc.status_code, time.perf_counter() - t0)
            raise
        # Spilled back to legacy: the gates count the serverless side's failure, not
        # legacy's answer.
        status = out.status if record.spill is None else failure_status(record.spill)
        _count_retried(cutover, ref.name, primary, record)
        cutover.count_call(ref.name, primary, status, record.upstream_s or time.perf_counter() - t0)
        if record.backend is Backend.LEGACY and runtime.config.recording.answers:
            _record_answer(runtime, inbound, out)
        # A spilled answer is the legacy backend's own: nothing to compare it with.
        if decision.shadow is not None and record.spill is None:
            record.shadow = decision.shadow
            shadow = runtime.shadow
            # Nothing is built for a request the mirror has no slot for: at saturation
            # most are dropped.
            if not shadow.drop_if_full(ref.name):
                shadow.submit(
                    ShadowJob(ref.name, record.request_id, primary, decision.shadow, out, inbound)
                )
        return out


async def new_style_invocations(
    scope: Scope, receive: Receive, name: str | None, segment: str
) -> Reply:
    """A migrated client on `/serving-endpoints/<segment>/...` (`name` None) or
    `/model-endpoint/<name>/<segment>/...` (§1.5).

    Forwarded untranslated, Content-Type kept, the reply returned as it came; the
    cutover weight does not apply: the client has chosen the new side.
    """
    if scope["method"] != "POST":
        return NEW_STYLE_405
    runtime, record = _context(scope)
    models = runtime.config.models
    if name is None:
        ref = paths.resolve_serving_endpoint(models, segment)
    else:
        ref = paths.resolve_model_endpoint(models, name, segment)
    record.model, record.version = ref.name, ref.version
    record.legacy_format = "new"
    body = await read_body(receive)  # before a place, as for a legacy request
    model_gate = runtime.gates.get(ref.name)  # the model's place first, as for legacy
    with runtime.admission if model_gate is None else await model_gate.admit(record):
        inbound = _inbound(scope, ref, body, record.request_id)
        return await exchange.send_new_style(inbound, runtime.pools, runtime.credentials, record)


def _method_gate(request: Request, allow: tuple[str, ...], wanted: str) -> Response | None:
    """`method_gate` for a Starlette endpoint."""
    reply = method_gate(request.method, allow, wanted)
    return None if reply is None else ReplyResponse(reply)


async def root_invocations(request: Request) -> Response:
    """`/invocations` of a 1.x scoring server: the proxy serves many models, not one."""
    gate = _method_gate(request, INVOCATION_ALLOW, "POST")
    if gate is not None:
        return gate
    raise NoRoute("POST /invocations names no model; use /model/<name>/<version>/invocations")


async def auxiliary(request: Request) -> Response:
    """`/ping`, `/health`, `/version`, at the root or under a model, answered locally (§1.3)."""
    params = request.path_params
    if "name" in params:
        ref = runtime_of(request).resolve_legacy(params["name"], params["version"])
        record = record_of(request.scope)
        if record is not None:
            record.model, record.version = ref.name, ref.version
    if request.method in ("GET", "HEAD"):
        word = request.scope["path"].rsplit("/", 1)[1]
        body = AUX_BODIES[word] if request.method == "GET" else b""
        return ReplyResponse(Reply(200, body, JSON))
    gate = _method_gate(request, AUX_ALLOW, "GET")
    assert gate is not None  # GET was handled above; _method_gate raised for the rest
    return gate
