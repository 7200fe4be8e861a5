"""The request handlers: thin glue that runs the named steps in order (architecture §1.3).

Every decision is a pure function elsewhere (paths, protocol, headers); this module only
reads the request, calls them, talks to the upstream and returns the reply.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy import headers as header_rules
from proxy.backends import Target
from proxy.errors import (
    JSON,
    MethodNotAllowed,
    NoRoute,
    ProxyError,
)
from proxy.middleware import reply_messages
from proxy.models import Backend, ExchangeRecord, LegacyProtocol, ModelRef, Reply, UpstreamReply
from proxy.protocol import paths
from proxy.protocol.legacy import parse_request
from proxy.protocol.translate import legacy_to_v2, v2_to_legacy
from proxy.runtime import Runtime

INVOCATION_ALLOW = ("OPTIONS", "POST")
AUX_ALLOW = ("GET", "HEAD", "OPTIONS")
# §1.3: the recorded 1.30.1 bodies of the scoring server's own endpoints.
AUX_BODIES = {"ping": b'"\n"', "health": b'"\n"', "version": b"1.30.1"}
# §6.4 M9/M11: tell a retrying client when to come back.
RETRY_AFTER_STATUSES = frozenset({429, 503})
NEW_STYLE_405 = Reply(405, b'{"detail":"Method Not Allowed"}', JSON, (("allow", "POST"),))


class ReplyResponse(Response):
    """A finished `Reply` as an ASGI response, headers exactly as given."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.status_code = reply.status
        self.body = reply.body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for message in reply_messages(self.reply):
            await send(message)


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.state.runtime
    return runtime


def record_of(request: Request) -> ExchangeRecord:
    record: ExchangeRecord = request.state.record
    return record


def _note_model(record: ExchangeRecord, ref: ModelRef) -> None:
    record.model, record.version = ref.name, ref.version


def _client_host(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _send(
    runtime: Runtime,
    record: ExchangeRecord,
    target: Target,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> UpstreamReply:
    record.backend = target.backend
    t0 = time.perf_counter()
    try:
        return await runtime.upstream(target).send(method, path, headers, body)
    finally:
        record.upstream_s = time.perf_counter() - t0


def _passthrough_reply(reply: UpstreamReply) -> Reply:
    """§1.4, §1.5: the upstream's status, headers and bytes as they came (§7.3)."""
    return Reply(
        reply.status, reply.body, None, tuple(header_rules.from_passthrough(reply.headers))
    )


def _method_gate(request: Request, allow: tuple[str, ...], wanted: str) -> Response | None:
    """§6.5: OPTIONS answers 200 with `Allow`; any other method but `wanted` is a 405."""
    if request.method == wanted:
        return None
    if request.method == "OPTIONS":
        return ReplyResponse(
            Reply(200, b"", "text/html; charset=utf-8", (("allow", ", ".join(allow)),))
        )
    raise MethodNotAllowed(allow)


async def legacy_invocations(request: Request) -> Response:
    """`POST /model/<name>/<version-or-stage>/invocations` (§1.2, §4, §5, §6.4)."""
    gate = _method_gate(request, INVOCATION_ALLOW, "POST")
    if gate is not None:
        return gate
    runtime, record = runtime_of(request), record_of(request)
    ref = paths.resolve_legacy(
        runtime.config.models, request.path_params["name"], request.path_params["version"]
    )
    _note_model(record, ref)
    model = runtime.config.models[ref.name]
    targets = runtime.targets[ref.name]
    with runtime.admit():
        body = await request.body()
        incoming = header_rules.decode(request.scope["headers"])
        if model.route is Backend.LEGACY and targets.legacy is not None:
            target = targets.legacy
            path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
            if target.path_template is not None:
                path = paths.render_path(target.path_template, ref)
            if request.url.query:
                path += "?" + request.url.query
            reply = await _send(
                runtime,
                record,
                target,
                "POST",
                path,
                header_rules.to_legacy(incoming, request_id=record.request_id),
                body,
            )
            return ReplyResponse(_passthrough_reply(reply))

        target = targets.serverless
        path = paths.render_path(target.path_template or "", ref)
        content_type = request.headers.get("content-type")
        if model.legacy_protocol is LegacyProtocol.MLFLOW2:
            # §8.1: the model already spoke MLflow 2 on legacy serving; map the URL only.
            reply = await _send(
                runtime,
                record,
                target,
                "POST",
                path,
                header_rules.to_serverless(
                    incoming,
                    content_type=content_type,
                    token=target.token,
                    request_id=record.request_id,
                    client_host=_client_host(request),
                ),
                body,
            )
            return ReplyResponse(_passthrough_reply(reply))

        t0 = time.perf_counter()
        legacy_request = parse_request(content_type, body, accept_v2_bodies=model.accept_v2_bodies)
        record.legacy_format = str(legacy_request.format)
        v2 = legacy_to_v2(legacy_request, csv_mode=model.csv_mode, upstream_nan=model.upstream_nan)
        record.translate_s += time.perf_counter() - t0
        reply = await _send(
            runtime,
            record,
            target,
            "POST",
            path,
            header_rules.to_serverless(
                incoming,
                content_type=v2.content_type,
                token=target.token,
                request_id=record.request_id,
                client_host=_client_host(request),
            ),
            v2.body,
        )
        t0 = time.perf_counter()
        try:
            out = v2_to_legacy(
                reply.status, reply.content_type, reply.body, wrapper_attr=model.legacy_wrapper_attr
            )
        finally:
            record.translate_s += time.perf_counter() - t0
        retry_after = reply.header("retry-after")
        if retry_after is not None and out.status in RETRY_AFTER_STATUSES:
            out = Reply(
                out.status, out.body, out.content_type, (*out.headers, ("retry-after", retry_after))
            )
        return ReplyResponse(out)


async def new_style_invocations(request: Request) -> Response:
    """A migrated client on `/serving-endpoints/...` or `/model-endpoint/...` (§1.5).

    Forwarded untranslated, Content-Type kept, the reply returned as it came; the
    cutover weight does not apply: the client has chosen the new side.
    """
    if request.method != "POST":
        return ReplyResponse(NEW_STYLE_405)
    runtime, record = runtime_of(request), record_of(request)
    params = request.path_params
    if "endpoint" in params:
        ref = paths.resolve_serving_endpoint(runtime.config.models, params["endpoint"])
    else:
        ref = paths.resolve_model_endpoint(runtime.config.models, params["name"], params["version"])
    _note_model(record, ref)
    record.legacy_format = "new"
    target = runtime.targets[ref.name].serverless
    path = paths.render_path(target.path_template or "", ref)
    if request.url.query:
        path += "?" + request.url.query
    with runtime.admit():
        body = await request.body()
        reply = await _send(
            runtime,
            record,
            target,
            "POST",
            path,
            header_rules.to_serverless(
                header_rules.decode(request.scope["headers"]),
                content_type=request.headers.get("content-type"),
                token=target.token,
                request_id=record.request_id,
                client_host=_client_host(request),
            ),
            body,
        )
    return ReplyResponse(_passthrough_reply(reply))


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
        runtime = runtime_of(request)
        ref = paths.resolve_legacy(runtime.config.models, params["name"], params["version"])
        _note_model(record_of(request), ref)
    if request.method in ("GET", "HEAD"):
        word = request.url.path.rsplit("/", 1)[1]
        body = AUX_BODIES[word] if request.method == "GET" else b""
        return ReplyResponse(Reply(200, body, JSON))
    gate = _method_gate(request, AUX_ALLOW, "GET")
    assert gate is not None  # GET was handled above; _method_gate raised for the rest
    return gate


def local_reply(error: ProxyError) -> Response:
    return ReplyResponse(error.to_reply())
