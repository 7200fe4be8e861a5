"""The request handlers: thin glue that runs the named steps in order (architecture §1.3).

Every decision is a pure function elsewhere (paths, protocol, headers); this module only
reads the request, calls them, talks to the upstream and returns the reply.

The scoring handlers take the ASGI scope and `receive` and return a `Reply`:
`proxy.dispatch` calls them straight, ahead of Starlette's router, because on the hot path
the router, its exception layers and its `Request` object cost more than the translation
does (py-spy, benchmarks/overhead.py). The rare endpoints stay ordinary Starlette ones.
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
    ClientClosed,
    InternalError,
    MethodNotAllowed,
    NoRoute,
    ProxyError,
)
from proxy.middleware import record_of as scope_record
from proxy.middleware import reply_messages
from proxy.models import Backend, ExchangeRecord, LegacyProtocol, ModelRef, Reply, UpstreamReply
from proxy.protocol import paths
from proxy.protocol.legacy import parse_request
from proxy.protocol.translate import legacy_to_v2, v2_to_legacy
from proxy.recorder import record_sample
from proxy.runtime import Runtime, Upstreams
from proxy.shadow import ShadowJob, ShadowRequest

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


def error_reply(scope: Scope, error: ProxyError) -> Reply:
    """The one place a local reply is rendered (architecture §1.4): the record learns the
    flag and the reason for the access log, the client gets the error in its shape."""
    record = scope_record(scope)
    if record is not None:
        record.flag, record.detail = error.flag, error.message
    return error.to_reply()


def bug_reply(scope: Scope, exc: BaseException) -> Reply:
    """An unhandled exception: a 500 without a traceback for the client (§6.5 bug); the
    record says which exception, the log (the caller's) has the traceback."""
    record = scope_record(scope)
    if record is not None:
        record.flag, record.detail = "BUG", type(exc).__name__
    return InternalError().to_reply()


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.state.runtime
    return runtime


def _context(scope: Scope) -> tuple[Runtime, ExchangeRecord]:
    """The app's runtime (lifespan state) and the record the middleware opened."""
    state = scope["state"]
    return state["runtime"], state["record"]


async def read_body(receive: Receive) -> bytes:
    """The whole request body; `BodyLimitMiddleware` has already bounded it.

    Raises:
        ClientClosed: the client went away before the last chunk.
    """
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")
        return body  # the common case: one message, no join
    chunks: list[bytes] = []
    while True:
        if message["type"] == "http.disconnect":
            raise ClientClosed()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
        message = await receive()


def _client_host(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    """The first value of a header among already-decoded, lower-cased pairs."""
    for key, value in headers:
        if key == name:
            return value
    return None


def _query(scope: Scope) -> str:
    """The raw query string, as the client sent it."""
    raw: bytes = scope.get("query_string", b"")
    return raw.decode("latin-1")


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


async def _send(
    runtime: Upstreams,
    record: ExchangeRecord,
    target: Target,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    shadow: bool,
) -> UpstreamReply:
    """POST to one backend, timing the wait on the record."""
    record.backend = target.backend
    pool = runtime.shadow_upstream(target) if shadow else runtime.upstream(target)
    t0 = time.perf_counter()
    try:
        return await pool.send("POST", path, headers, body)
    finally:
        record.upstream_s = time.perf_counter() - t0


def _passthrough_reply(reply: UpstreamReply) -> Reply:
    """§1.4, §1.5: the upstream's status, headers and bytes as they came (§7.3)."""
    return Reply(
        reply.status, reply.body, None, tuple(header_rules.from_passthrough(reply.headers))
    )


@dataclass(frozen=True, slots=True)
class _Invocation:
    """One legacy request, read once, that either backend can be sent: the primary call
    writes onto the client's record, a shadow call (issue 3 §5) onto a scratch one."""

    scope: Scope
    runtime: Upstreams
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
        scope = self.scope
        if target.path_template is not None:
            path = self.runtime.upstream_path(target, self.ref)
        else:
            path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if query := _query(scope):
            path += "?" + query
        headers = header_rules.to_legacy(self.incoming, request_id=self.request_id)
        reply = await _send(self.runtime, record, target, path, headers, self.body, shadow)
        return _passthrough_reply(reply)

    async def _serverless(self, record: ExchangeRecord, shadow: bool) -> Reply:
        """§2–§5: translate, POST with §7.1's headers, translate the answer back."""
        runtime, model = self.runtime, self.model
        target = self.targets.serverless
        path = runtime.upstream_path(target, self.ref)
        content_type = _header(self.incoming, "content-type")
        if model.legacy_protocol is LegacyProtocol.MLFLOW2:
            # §8.1: the model already spoke MLflow 2 on legacy serving; map the URL only.
            headers = self._serverless_headers(target, content_type)
            reply = await _send(runtime, record, target, path, headers, self.body, shadow)
            return _passthrough_reply(reply)

        t0 = time.perf_counter()
        legacy_request = parse_request(
            content_type, self.body, accept_v2_bodies=model.accept_v2_bodies
        )
        record.legacy_format = str(legacy_request.format)
        v2 = legacy_to_v2(legacy_request, csv_mode=model.csv_mode, upstream_nan=model.upstream_nan)
        record.translate_s += time.perf_counter() - t0
        if not shadow and runtime.config.recording.enabled:
            record_sample(
                runtime.config.recording,
                model=self.ref.name,
                version=self.ref.version,
                path=self.scope["path"],
                content_type=content_type,
                body=self.body,
                v2_content_type=v2.content_type,
                v2_body=v2.body,
            )
        headers = self._serverless_headers(target, v2.content_type)
        reply = await _send(runtime, record, target, path, headers, v2.body, shadow)
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

    def _serverless_headers(
        self, target: Target, content_type: str | None
    ) -> list[tuple[str, str]]:
        """§7.1: allow-listed client headers, the given Content-Type, auth by rule."""
        return header_rules.to_serverless(
            self.incoming,
            content_type=content_type,
            token=target.token,
            request_id=self.request_id,
            client_host=_client_host(self.scope),
        )


async def shadow_send(
    upstreams: Upstreams, request: ShadowRequest, backend: Backend, request_id: str
) -> Reply:
    """The shadow call of `request` to `backend`, through `upstreams`' shadow pools: the
    answer in the legacy client's form, or a `ProxyError`, as the inline mirror gets it."""
    scope: Scope = {
        "path": request.path,
        "raw_path": request.raw_path,
        "query_string": request.query_string,
        "client": request.client,
    }
    name = request.ref.name
    call = _Invocation(
        scope,
        upstreams,
        request.ref,
        upstreams.config.models[name],
        upstreams.targets[name],
        request.incoming,
        request.body,
        request_id,
    )
    return await call.send(backend, shadow=True)


def _mirror(
    runtime: Runtime, call: _Invocation, primary: Backend, shadow: Backend, out: Reply
) -> None:
    """Hand the request and its answer `out` to the shadow mirror (issue 3 §5); nothing is
    built for a request the mirror has no slot for, since at saturation most are dropped."""
    mirror = runtime.shadow
    if mirror.drop_if_full(call.ref.name):
        return
    scope, body = call.scope, call.body

    async def send() -> Reply:
        return await call.send(shadow, shadow=True)

    client = scope.get("client")
    request = ShadowRequest(
        call.ref,
        scope["path"],
        scope.get("raw_path"),
        scope.get("query_string", b""),
        tuple(client) if client else None,
        call.incoming,
        body,
    )
    payload = body if runtime.config.shadow.keep_payloads else None
    mirror.submit(
        ShadowJob(call.ref.name, call.request_id, primary, shadow, out, send, payload, request)
    )


async def legacy_invocations(scope: Scope, receive: Receive, name: str, segment: str) -> Reply:
    """`POST /model/<name>/<version-or-stage>/invocations` (§1.2, §4, §5, §6.4).

    The cutover decides the backend per client (issue 3 §2); once the client's answer is
    ready, a shadowed request is handed to the mirror and the answer goes out unchanged.
    """
    gate = method_gate(scope["method"], INVOCATION_ALLOW, "POST")
    if gate is not None:
        return gate
    runtime, record = _context(scope)
    ref = runtime.resolve_legacy(name, segment)
    record.model, record.version = ref.name, ref.version
    with runtime.admission:
        body = await read_body(receive)
        incoming = header_rules.decode(scope["headers"])
        cutover = runtime.cutover
        decision = cutover.decide(ref, incoming, _client_host(scope))
        record.bucket, record.route_reason = decision.bucket, decision.reason
        call = _Invocation(
            scope,
            runtime,
            ref,
            runtime.config.models[ref.name],
            runtime.targets[ref.name],
            incoming,
            body,
            record.request_id,
        )
        primary = decision.primary
        t0 = time.perf_counter()
        try:
            out = await call.send(primary, record)
        except ProxyError as exc:
            cutover.observe(ref.name, primary, exc.status_code, time.perf_counter() - t0)
            raise
        cutover.observe(
            ref.name, primary, out.status, record.upstream_s or time.perf_counter() - t0
        )
        if decision.shadow is not None:
            record.shadow = decision.shadow
            _mirror(runtime, call, primary, decision.shadow, out)
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
    target = runtime.targets[ref.name].serverless
    path = runtime.upstream_path(target, ref)
    if query := _query(scope):
        path += "?" + query
    with runtime.admission:
        body = await read_body(receive)
        incoming = header_rules.decode(scope["headers"])
        headers = header_rules.to_serverless(
            incoming,
            content_type=_header(incoming, "content-type"),
            token=target.token,
            request_id=record.request_id,
            client_host=_client_host(scope),
        )
        reply = await _send(runtime, record, target, path, headers, body, False)
    return _passthrough_reply(reply)


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
        record = scope_record(request.scope)
        if record is not None:
            record.model, record.version = ref.name, ref.version
    if request.method in ("GET", "HEAD"):
        word = request.scope["path"].rsplit("/", 1)[1]
        body = AUX_BODIES[word] if request.method == "GET" else b""
        return ReplyResponse(Reply(200, body, JSON))
    gate = _method_gate(request, AUX_ALLOW, "GET")
    assert gate is not None  # GET was handled above; _method_gate raised for the rest
    return gate
