"""One call to a backend: a legacy request in, the answer in the legacy client's form out.

Plain data in, plain data out: an `Inbound` (the client's request as read once), the
backend to call, the pools and credentials the app built; a `Reply`, or a `ProxyError`.
It knows no ASGI, so the request handler and the shadow worker (in another process)
make the very same call. The facts a call learns on the way (which backend, the legacy
format, the time spent waiting and translating, the retries, the hold and the spill-back)
are written onto a `Facts` the caller passes: the request's record, or a scratch `Trace`
for a shadow call.

A client's call is sent again when the upstream did not process it, by the rules of
`proxy.resilience` and within the proxy-wide `retry_budget` (README "When the endpoint is
slow, cold, rate-limited or gone"); a shadow call is sent once. With `fallback: legacy`,
a legacy client's request the serverless side did not process goes to the legacy backend
instead, once.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from proxy import headers as header_rules
from proxy.config import ModelConfig
from proxy.config.backends import Limits
from proxy.credentials import Credentials, TokenSource
from proxy.errors import UpstreamConnectError, UpstreamTimeout
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
from proxy.resilience import RETRY_STATUS_REASONS
from proxy.retrying import SpillBack, again, reauthorized
from proxy.upstream.pools import Pools
from proxy.upstream.targets import Target

# §6.4 M9/M11: tell a retrying client when to come back.
RETRY_AFTER_STATUSES = frozenset({429, 503})


class Call(enum.Enum):
    """How one backend call is made."""

    # A client's call: retried by its target's policy.
    PRIMARY = "primary"
    # A legacy client's call to serverless under `fallback: legacy`: retried, then
    # spilled back to legacy if the serverless side did not process it.
    SPILLABLE = "spillable"
    # The spill-back itself: once, within what is left of the request's deadline.
    ONCE = "once"
    # A shadow call: the shadow pools, once.
    SHADOW = "shadow"


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
    retries: tuple[str, ...]
    retry_stop: str | None
    held_s: float
    spill: str | None


@dataclass(slots=True)
class Trace:
    """The facts of a call nobody reports on one by one (a shadow call, a probe)."""

    backend: Backend | None = None
    legacy_format: str | None = None
    upstream_s: float | None = None
    translate_s: float = 0.0
    retries: tuple[str, ...] = ()
    retry_stop: str | None = None
    held_s: float = 0.0
    spill: str | None = None


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
    fallback: bool = False,
    on_translated: OnTranslated | None = None,
) -> Reply:
    """Send `inbound` to `backend` and return the answer in the legacy client's form.

    Legacy gets the client's bytes unchanged (§1.4); serverless gets the translation
    (§2–§5, headers by §7.1) and its answer is translated back (§6). A model with no
    legacy side always goes to serverless. A client's call is retried by its target's
    policy (`proxy.resilience`); when the retries are spent, the last answer is the reply.

    Args:
        shadow: use the shadow pools, so a slow shadow backend never takes a connection
            the clients' calls need; a shadow call is never retried.
        fallback: the request is a legacy client's, so with the model's `fallback: legacy`
            a serverless call that ends unprocessed (429, 503, a connection failure before
            writing, a spent cold-start hold) is sent to the legacy backend instead, once,
            within the time the request has left; `facts.spill` says why.

    Raises:
        ProxyError: the request cannot be translated, or the backend gave no valid answer.
    """
    targets = pools.targets[inbound.ref.name]
    call = Call.SHADOW if shadow else Call.PRIMARY
    if backend is Backend.LEGACY and targets.legacy is not None:
        return await _legacy(inbound, targets.legacy, pools, credentials, facts, call)
    if not (fallback and targets.fallback and call is Call.PRIMARY):
        return await _serverless(
            inbound, targets.serverless, pools, credentials, facts, call, on_translated
        )
    assert targets.legacy is not None  # ModelTargets.fallback says there is one
    try:
        return await _serverless(
            inbound, targets.serverless, pools, credentials, facts, Call.SPILLABLE, on_translated
        )
    except SpillBack as spill:
        facts.spill = spill.reason
        waited, facts.upstream_s = facts.upstream_s or 0.0, None
        try:
            async with asyncio.timeout(spill.deadline - time.perf_counter()):
                out = await _legacy(inbound, targets.legacy, pools, credentials, facts, Call.ONCE)
        except TimeoutError as exc:
            raise UpstreamTimeout() from exc
        finally:
            # The wait on both backends: the serverless one is no time of the proxy's own.
            facts.upstream_s = waited + (facts.upstream_s or 0.0)
        return out


async def send_new_style(
    inbound: Inbound, pools: Pools, credentials: Credentials, facts: Facts
) -> Reply:
    """A migrated client's request (§1.5): forwarded untranslated to the model's serverless
    side, Content-Type kept, the reply returned as it came (retried as any client's call,
    never spilled back: the client chose the new side)."""
    target = pools.targets[inbound.ref.name].serverless
    path = _with_query(pools.path(target, inbound.ref), inbound.query)
    source = credentials.serverless.get(inbound.ref.name)
    headers = await _serverless_headers(inbound, source, inbound.header("content-type"))
    return await _pass_through(
        pools, facts, target, path, (headers, source), inbound.body, Call.PRIMARY
    )


async def _pass_through(
    pools: Pools,
    facts: Facts,
    target: Target,
    path: str,
    auth: tuple[list[tuple[str, str]], TokenSource | None],
    body: Body,
    call: Call,
) -> Reply:
    """§1.4, §1.5: POST, and the upstream's status, headers and bytes as they came (§7.3),
    but a `Set-Cookie` the target's backend does not pass. `auth`: the headers and the
    source of the token in them (None: the client's own)."""
    headers, source = auth
    reply = await _post(pools, facts, target, path, headers, body, call, source)
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
    call: Call,
) -> Reply:
    """§1.4: the client's bytes, unchanged, to the legacy server (headers by §7.2)."""
    path = inbound.raw_path if target.path_template is None else pools.path(target, inbound.ref)
    path = _with_query(path, inbound.query)
    source = credentials.legacy.get(inbound.ref.name)
    headers = header_rules.to_legacy(
        inbound.headers,
        request_id=inbound.request_id,
        token=None if source is None else await source.token(),
    )
    return await _pass_through(pools, facts, target, path, (headers, source), inbound.body, call)


async def _serverless(
    inbound: Inbound,
    target: Target,
    pools: Pools,
    credentials: Credentials,
    facts: Facts,
    call: Call,
    on_translated: OnTranslated | None,
) -> Reply:
    """§2–§5: translate, POST with §7.1's headers, translate the answer back."""
    model = pools.config.models[inbound.ref.name]
    path = pools.path(target, inbound.ref)
    content_type = inbound.header("content-type")
    source = credentials.serverless.get(inbound.ref.name)
    if model.legacy_protocol is LegacyProtocol.MLFLOW2:
        # §8.1: the model already spoke MLflow 2 on legacy serving; map the URL only.
        headers = await _serverless_headers(inbound, source, content_type)
        return await _pass_through(
            pools, facts, target, path, (headers, source), inbound.body, call
        )

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
    if on_translated is not None and call is not Call.SHADOW:
        on_translated(inbound, v2)
    headers = await _serverless_headers(inbound, source, v2.content_type)
    reply = await _post(pools, facts, target, path, headers, v2.body, call, source)
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


async def _serverless_headers(
    inbound: Inbound, source: TokenSource | None, content_type: str | None
) -> list[tuple[str, str]]:
    """§7.1: allow-listed client headers, the given Content-Type, auth by rule."""
    return header_rules.to_serverless(
        inbound.headers,
        content_type=content_type,
        token=None if source is None else await source.token(),
        request_id=inbound.request_id,
    )


async def _post(
    pools: Pools,
    facts: Facts,
    target: Target,
    path: str,
    headers: list[tuple[str, str]],
    body: Body,
    call: Call,
    source: TokenSource | None = None,
) -> UpstreamReply:
    """POST to one backend, timing the wait (retries and their pauses included).

    A healthy call costs one branch on its status: only an answer or a failure that
    could be retried (or spilled back) takes the slow path, `retrying.again`. A 401 to the
    proxy's own token (from `source`) is sent once more with a renewed one
    (`retrying.reauthorized`), before any other rule.
    """
    facts.backend = target.backend
    t0 = time.perf_counter()
    if call is Call.SHADOW or call is Call.ONCE:
        pool = pools.shadow(target) if call is Call.SHADOW else pools.primary(target)
        try:
            reply = await pool.send("POST", path, headers, body)
            if reply.status == 401 and source is not None:
                _, reply = await reauthorized(pool, source, (path, headers, body), reply, facts)
            return reply
        finally:
            facts.upstream_s = time.perf_counter() - t0
    pool = pools.primary(target)
    policy = target.retry
    if policy is not None:
        pools.retry_budget.note_request(t0)
    spillable = call is Call.SPILLABLE
    try:
        try:
            reply = await pool.send("POST", path, headers, body)
            if reply.status == 401 and source is not None:
                request = (path, headers, body)
                headers, reply = await reauthorized(pool, source, request, reply, facts)
        except UpstreamConnectError as exc:
            if exc.sent or (policy is None and not spillable):
                raise
            outcome: UpstreamReply | UpstreamConnectError = exc
        else:
            if reply.status not in RETRY_STATUS_REASONS or (policy is None and not spillable):
                return reply
            outcome = reply
        return await again(
            pool,
            pools.retry_budget,
            facts,
            target,
            (path, headers, body),
            t0,
            outcome,
            spillable=spillable,
        )
    finally:
        facts.upstream_s = time.perf_counter() - t0


def _with_query(path: str, query: str) -> str:
    return f"{path}?{query}" if query else path
