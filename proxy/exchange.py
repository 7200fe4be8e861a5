"""One call to a backend: a legacy request in, the answer in the legacy client's form out.

Plain data in, plain data out: an `Inbound` (the client's request as read once), the
backend to call, the pools and credentials the app built; a `Reply`, or a `ProxyError`.
It knows no ASGI, so the request handler and the shadow worker (in another process)
make the very same call. The facts a call learns on the way (which backend, the legacy
format, the time spent waiting and translating) are written onto a `Facts` the caller
passes: the request's record, or a scratch `Trace` for a shadow call.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from proxy import headers as header_rules
from proxy.config import ModelConfig
from proxy.config.backends import Limits
from proxy.credentials import Credentials
from proxy.models import (
    Backend,
    Body,
    LegacyProtocol,
    ModelRef,
    Reply,
    UpstreamReply,
    V2Request,
)
from proxy.protocol.legacy import parse_request
from proxy.protocol.limits import WorkLimits
from proxy.protocol.translate import legacy_to_v2, v2_to_legacy
from proxy.upstream.pools import Pools
from proxy.upstream.targets import Target

# §6.4 M9/M11: tell a retrying client when to come back.
RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class Inbound:
    """A client's scoring request, read once, as any backend call needs it.

    Attributes:
        ref: the model, as the URL resolved against the config.
        path: the request path (decoded), as the record and a recording show it.
        raw_path: the path as the client sent it, forwarded to legacy unchanged (§1.4).
        query: the raw query string, forwarded as sent.
        client_host: the client's address (uvicorn's, trusted forwarding applied).
        headers: the client's headers, lower-case names (`headers.decode`).
        body: the client's bytes.
        request_id: the request's id, sent upstream as `X-Request-Id`.
    """

    ref: ModelRef
    path: str
    raw_path: str
    query: str
    client_host: str | None
    headers: list[tuple[str, str]]
    body: bytes
    request_id: str

    def __reduce__(self) -> tuple[Any, ...]:
        # Crosses to the shadow worker on every mirrored request: the constructor and a
        # tuple unpickle several times faster than a slotted dataclass's state protocol.
        return (
            Inbound,
            (
                self.ref,
                self.path,
                self.raw_path,
                self.query,
                self.client_host,
                self.headers,
                self.body,
                self.request_id,
            ),
        )

    def header(self, name: str) -> str | None:
        """The first value of a header (`name` lower-case)."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Facts(Protocol):
    """What a call writes down as it goes; `telemetry.record.ExchangeRecord` is one."""

    backend: Backend | None
    legacy_format: str | None
    upstream_s: float | None
    translate_s: float


@dataclass(slots=True)
class Trace:
    """The facts of a call nobody reports on one by one (a shadow call)."""

    backend: Backend | None = None
    legacy_format: str | None = None
    upstream_s: float | None = None
    translate_s: float = 0.0


# Told of every translated request before it is sent (payload recording), never of a
# shadow call's.
OnTranslated = Callable[[Inbound, V2Request], None]


async def send(
    inbound: Inbound,
    backend: Backend,
    pools: Pools,
    credentials: Credentials,
    facts: Facts,
    *,
    shadow: bool = False,
    on_translated: OnTranslated | None = None,
) -> Reply:
    """Send `inbound` to `backend` and return the answer in the legacy client's form.

    Legacy gets the client's bytes unchanged (§1.4); serverless gets the translation
    (§2–§5, headers by §7.1) and its answer is translated back (§6). A model with no
    legacy side always goes to serverless.

    Args:
        shadow: use the shadow pools, so a slow shadow backend never takes a connection
            the clients' calls need.

    Raises:
        ProxyError: the request cannot be translated, or the backend gave no valid answer.
    """
    targets = pools.targets[inbound.ref.name]
    if backend is Backend.LEGACY and targets.legacy is not None:
        return await _legacy(inbound, targets.legacy, pools, credentials, facts, shadow)
    return await _serverless(
        inbound, targets.serverless, pools, credentials, facts, shadow, on_translated
    )


async def send_new_style(
    inbound: Inbound, pools: Pools, credentials: Credentials, facts: Facts
) -> Reply:
    """A migrated client's request (§1.5): forwarded untranslated to the model's serverless
    side, Content-Type kept, the reply returned as it came."""
    target = pools.targets[inbound.ref.name].serverless
    path = _with_query(pools.path(target, inbound.ref), inbound.query)
    headers = _serverless_headers(inbound, credentials, inbound.header("content-type"))
    return await _pass_through(pools, facts, target, path, headers, inbound.body, False)


async def _pass_through(
    pools: Pools,
    facts: Facts,
    target: Target,
    path: str,
    headers: list[tuple[str, str]],
    body: Body,
    shadow: bool,
) -> Reply:
    """§1.4, §1.5: POST, and the upstream's status, headers and bytes as they came (§7.3),
    but a `Set-Cookie` the target's backend does not pass."""
    reply = await _post(pools, facts, target, path, headers, body, shadow)
    headers_out = header_rules.from_passthrough(
        reply.headers, pass_set_cookie=target.pass_set_cookie
    )
    return Reply(reply.status, reply.body, None, tuple(headers_out))


async def _legacy(
    inbound: Inbound,
    target: Target,
    pools: Pools,
    credentials: Credentials,
    facts: Facts,
    shadow: bool,
) -> Reply:
    """§1.4: the client's bytes, unchanged, to the legacy server (headers by §7.2)."""
    path = inbound.raw_path if target.path_template is None else pools.path(target, inbound.ref)
    path = _with_query(path, inbound.query)
    source = credentials.legacy.get(inbound.ref.name)
    headers = header_rules.to_legacy(
        inbound.headers,
        request_id=inbound.request_id,
        token=None if source is None else source.token(),
    )
    return await _pass_through(pools, facts, target, path, headers, inbound.body, shadow)


async def _serverless(
    inbound: Inbound,
    target: Target,
    pools: Pools,
    credentials: Credentials,
    facts: Facts,
    shadow: bool,
    on_translated: OnTranslated | None,
) -> Reply:
    """§2–§5: translate, POST with §7.1's headers, translate the answer back."""
    model = pools.config.models[inbound.ref.name]
    path = pools.path(target, inbound.ref)
    content_type = inbound.header("content-type")
    if model.legacy_protocol is LegacyProtocol.MLFLOW2:
        # §8.1: the model already spoke MLflow 2 on legacy serving; map the URL only.
        headers = _serverless_headers(inbound, credentials, content_type)
        return await _pass_through(pools, facts, target, path, headers, inbound.body, shadow)

    limits = pools.config.limits
    t0 = time.perf_counter()
    try:
        # A large body is translated in a thread, so the loop keeps serving small ones.
        if len(inbound.body) < limits.offload_bytes:
            v2 = _translate(content_type, inbound.body, model, limits, facts)
        else:
            v2 = await asyncio.to_thread(
                _translate, content_type, inbound.body, model, limits, facts
            )
    finally:
        facts.translate_s += time.perf_counter() - t0
    if on_translated is not None and not shadow:
        on_translated(inbound, v2)
    headers = _serverless_headers(inbound, credentials, v2.content_type)
    reply = await _post(pools, facts, target, path, headers, v2.body, shadow)
    # Sent: a large translated body must not stay alive while the reply is translated.
    del v2
    t0 = time.perf_counter()
    try:
        if len(reply.body) < limits.offload_bytes:
            out = v2_to_legacy(
                reply.status,
                reply.content_type,
                reply.body,
                wrapper_attr=model.legacy_wrapper_attr,
            )
        else:
            out = await asyncio.to_thread(
                v2_to_legacy,
                reply.status,
                reply.content_type,
                reply.body,
                wrapper_attr=model.legacy_wrapper_attr,
            )
    finally:
        facts.translate_s += time.perf_counter() - t0
    retry_after = reply.header("retry-after")
    if retry_after is not None and out.status in RETRY_AFTER_STATUSES:
        out = Reply(
            out.status, out.body, out.content_type, (*out.headers, ("retry-after", retry_after))
        )
    return out


def _translate(
    content_type: str | None, body: bytes, model: ModelConfig, limits: Limits, facts: Facts
) -> V2Request:
    """§4: a legacy body, checked against the work limits, as the new protocol's request."""
    legacy_request = parse_request(
        content_type,
        body,
        accept_v2_bodies=model.accept_v2_bodies,
        limits=_work_limits(limits.max_columns, limits.max_cells, limits.max_depth),
    )
    facts.legacy_format = str(legacy_request.format)
    return legacy_to_v2(legacy_request, csv_mode=model.csv_mode, upstream_nan=model.upstream_nan)


# One per configuration, not one per request.
_work_limits = functools.lru_cache(maxsize=8)(WorkLimits)


def _serverless_headers(
    inbound: Inbound, credentials: Credentials, content_type: str | None
) -> list[tuple[str, str]]:
    """§7.1: allow-listed client headers, the given Content-Type, auth by rule."""
    source = credentials.serverless.get(inbound.ref.name)
    return header_rules.to_serverless(
        inbound.headers,
        content_type=content_type,
        token=None if source is None else source.token(),
        request_id=inbound.request_id,
    )


async def _post(
    pools: Pools,
    facts: Facts,
    target: Target,
    path: str,
    headers: list[tuple[str, str]],
    body: Body,
    shadow: bool,
) -> UpstreamReply:
    """POST to one backend, timing the wait."""
    facts.backend = target.backend
    pool = pools.shadow(target) if shadow else pools.primary(target)
    t0 = time.perf_counter()
    try:
        return await pool.send("POST", path, headers, body)
    finally:
        facts.upstream_s = time.perf_counter() - t0


def _with_query(path: str, query: str) -> str:
    return f"{path}?{query}" if query else path
