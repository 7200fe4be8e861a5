"""The request handlers: thin glue that runs the named steps in order (architecture §1.3).

Every decision is a pure function elsewhere (paths, protocol, headers); this module only
reads the request, calls them, talks to the upstream and returns the reply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy import headers as header_rules
from proxy.backends import ModelTargets, Target
from proxy.config import ModelConfig
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
from proxy.recorder import record_sample
from proxy.runtime import Runtime
from proxy.shadow import ShadowJob

INVOCATION_ALLOW = ("OPTIONS", "POST")
AUX_ALLOW = ("GET", "HEAD", "OPTIONS")
# §1.3: the recorded 1.30.1 bodies of the scoring server's own endpoints.
AUX_BODIES = {"ping": b"\n", "health": b"\n", "version": b"1.30.1"}
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
    client = request.scope.get("client")
    return client[0] if client else None


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    """The first value of a header among already-decoded, lower-cased pairs."""
    for key, value in headers:
        if key == name:
            return value
    return None


def _query(request: Request) -> str:
    """The raw query string, as the client sent it (scope, not the parsed URL: cheaper)."""
    raw: bytes = request.scope.get("query_string", b"")
    return raw.decode("latin-1")


async def _send(
    runtime: Runtime,
    record: ExchangeRecord,
    target: Target,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    shadow: bool = False,
) -> UpstreamReply:
    record.backend = target.backend
    pool = runtime.shadow_upstream(target) if shadow else runtime.upstream(target)
    t0 = time.perf_counter()
    try:
        return await pool.send(method, path, headers, body)
    finally:
        record.upstream_s = time.perf_counter() - t0


async def _send_serverless(
    runtime: Runtime,
    record: ExchangeRecord,
    target: Target,
    path: str,
    request: Request,
    incoming: list[tuple[str, str]],
    content_type: str | None,
    body: bytes,
    *,
    request_id: str,
    shadow: bool = False,
) -> UpstreamReply:
    """POST to a model's serverless side with §7.1's headers (allow-list, auth by rule)."""
    headers = header_rules.to_serverless(
        incoming,
        content_type=content_type,
        token=target.token,
        request_id=request_id,
        client_host=_client_host(request),
    )
    return await _send(runtime, record, target, "POST", path, headers, body, shadow=shadow)


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


@dataclass(frozen=True, slots=True)
class _Invocation:
    """One legacy request, read once, that either backend can be sent: the primary call
    writes onto the client's record, a shadow call (issue 3 §5) onto a scratch one."""

    request: Request
    runtime: Runtime
    ref: ModelRef
    model: ModelConfig
    targets: ModelTargets
    incoming: list[tuple[str, str]]
    body: bytes
    request_id: str

    async def send(
        self, backend: Backend, record: ExchangeRecord | None = None, *, shadow: bool = False
    ) -> Reply:
        """The answer in the legacy client's form, or a `ProxyError`."""
        if record is None:
            record = ExchangeRecord(self.request_id, "POST", "", time.perf_counter())
        if backend is Backend.LEGACY and self.targets.legacy is not None:
            return await self._legacy(self.targets.legacy, record, shadow)
        return await self._serverless(record, shadow)

    async def _legacy(self, target: Target, record: ExchangeRecord, shadow: bool) -> Reply:
        """§1.4: the client's bytes, unchanged, to the legacy server."""
        request = self.request
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        path = raw_path.decode("latin-1")
        if target.path_template is not None:
            path = paths.render_path(target.path_template, self.ref)
        if query := _query(request):
            path += "?" + query
        reply = await _send(
            self.runtime,
            record,
            target,
            "POST",
            path,
            header_rules.to_legacy(self.incoming, request_id=self.request_id),
            self.body,
            shadow=shadow,
        )
        return _passthrough_reply(reply)

    async def _post(
        self,
        record: ExchangeRecord,
        target: Target,
        path: str,
        content_type: str | None,
        body: bytes,
        shadow: bool,
    ) -> UpstreamReply:
        return await _send_serverless(
            self.runtime,
            record,
            target,
            path,
            self.request,
            self.incoming,
            content_type,
            body,
            request_id=self.request_id,
            shadow=shadow,
        )

    async def _serverless(self, record: ExchangeRecord, shadow: bool) -> Reply:
        request, model = self.request, self.model
        target = self.targets.serverless
        path = paths.render_path(target.path_template or "", self.ref)
        content_type = _header(self.incoming, "content-type")
        if model.legacy_protocol is LegacyProtocol.MLFLOW2:
            # §8.1: the model already spoke MLflow 2 on legacy serving; map the URL only.
            reply = await self._post(record, target, path, content_type, self.body, shadow)
            return _passthrough_reply(reply)

        t0 = time.perf_counter()
        legacy_request = parse_request(
            content_type, self.body, accept_v2_bodies=model.accept_v2_bodies
        )
        record.legacy_format = str(legacy_request.format)
        v2 = legacy_to_v2(legacy_request, csv_mode=model.csv_mode, upstream_nan=model.upstream_nan)
        record.translate_s += time.perf_counter() - t0
        if not shadow:
            record_sample(
                self.runtime.config.recording,
                model=self.ref.name,
                version=self.ref.version,
                path=request.scope["path"],
                content_type=content_type,
                body=self.body,
                v2_content_type=v2.content_type,
                v2_body=v2.body,
            )
        reply = await self._post(record, target, path, v2.content_type, v2.body, shadow)
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
        return out


async def legacy_invocations(request: Request) -> Response:
    """`POST /model/<name>/<version-or-stage>/invocations` (§1.2, §4, §5, §6.4).

    The cutover decides the backend per client (issue 3 §2); once the client's answer is
    ready, a shadowed request is handed to the mirror and the answer goes out unchanged.
    """
    gate = _method_gate(request, INVOCATION_ALLOW, "POST")
    if gate is not None:
        return gate
    runtime, record = runtime_of(request), record_of(request)
    ref = paths.resolve_legacy(
        runtime.config.models, request.path_params["name"], request.path_params["version"]
    )
    _note_model(record, ref)
    model = runtime.config.models[ref.name]
    with runtime.admit():
        body = await request.body()
        incoming = header_rules.decode(request.scope["headers"])
        decision = runtime.cutover.decide(ref, incoming, _client_host(request))
        record.bucket, record.route_reason = decision.bucket, decision.reason
        call = _Invocation(
            request,
            runtime,
            ref,
            model,
            runtime.targets[ref.name],
            incoming,
            body,
            record.request_id,
        )
        t0 = time.perf_counter()
        try:
            out = await call.send(decision.primary, record)
        except ProxyError as exc:
            runtime.cutover.observe(
                ref.name, decision.primary, exc.status_code, time.perf_counter() - t0
            )
            raise
        runtime.cutover.observe(
            ref.name, decision.primary, out.status, record.upstream_s or time.perf_counter() - t0
        )
        if decision.shadow is not None:
            shadow = decision.shadow
            record.shadow = shadow

            async def mirror() -> Reply:
                return await call.send(shadow, shadow=True)

            runtime.shadow.submit(
                ShadowJob(
                    ref.name,
                    record.request_id,
                    decision.primary,
                    shadow,
                    out,
                    mirror,
                    body if runtime.config.shadow.keep_payloads else None,
                )
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
    if query := _query(request):
        path += "?" + query
    with runtime.admit():
        body = await request.body()
        incoming = header_rules.decode(request.scope["headers"])
        reply = await _send_serverless(
            runtime,
            record,
            target,
            path,
            request,
            incoming,
            _header(incoming, "content-type"),
            body,
            request_id=record.request_id,
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
        word = request.scope["path"].rsplit("/", 1)[1]
        body = AUX_BODIES[word] if request.method == "GET" else b""
        return ReplyResponse(Reply(200, body, JSON))
    gate = _method_gate(request, AUX_ALLOW, "GET")
    assert gate is not None  # GET was handled above; _method_gate raised for the rest
    return gate


def local_reply(error: ProxyError) -> Response:
    return ReplyResponse(error.to_reply())
