"""Mirroring one job: the shadow call, then the comparison with the primary's answer.

The same code runs inline on the proxy's loop and in the shadow worker process. It never
raises but for cancellation: every failure is an outcome, never the client's concern.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping

from proxy import exchange
from proxy.compare import Answer, Tolerance, compare, shadow_error
from proxy.config import ProxyConfig
from proxy.credentials import Credentials
from proxy.errors import (
    Overloaded,
    ProxyError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
    render,
)
from proxy.models import Backend, Reply
from proxy.shadow.job import Outcome, ShadowJob
from proxy.upstream.base import BodyTooLarge, content_coding, decode_content
from proxy.upstream.pools import Pools

LOGGER = logging.getLogger("serving_proxy.shadow")
# A shadow call that could not produce an answer: the backend's fault, not the request's.
CALL_FAILURES = (UpstreamConnectError, UpstreamTimeout, UpstreamProtocolError, Overloaded)

# Sends a request to a backend and returns the answer in the legacy client's form.
ShadowCall = Callable[[exchange.Inbound, Backend], Awaitable[Reply]]


def shadow_call(pools: Pools, credentials: Credentials) -> ShadowCall:
    """`exchange.send` through the shadow pools, its facts kept by nobody."""

    async def call(inbound: exchange.Inbound, backend: Backend) -> Reply:
        return await exchange.send(
            inbound, backend, pools, credentials, exchange.Trace(), shadow=True
        )

    return call


def tolerances_of(config: ProxyConfig) -> dict[str, Tolerance]:
    """Each configured model's compare settings (`compare:`)."""
    return {name: Tolerance.from_config(m.compare) for name, m in config.models.items()}


async def mirror(job: ShadowJob, tolerances: Mapping[str, Tolerance], call: ShadowCall) -> Outcome:
    """Make the shadow call and compare its answer with the primary's, by the model's
    tolerance (the defaults for a model not listed)."""
    t0 = time.perf_counter()
    made: tuple[int, float] | None = None
    try:
        reply = await call(job.inbound, job.shadow)
    except CALL_FAILURES as exc:
        return Outcome(shadow_error(exc.flag), (exc.status_code, time.perf_counter() - t0))
    except ProxyError as exc:
        # Refused before any backend saw it (a body the serverless side cannot take):
        # the client would have got this local reply, so that is the shadow's answer.
        reply = render(exc)
    except Exception as exc:
        LOGGER.exception("shadow call failed for %s", job.model)
        return Outcome(shadow_error(f"BUG {type(exc).__name__}"))
    else:
        made = (reply.status, time.perf_counter() - t0)
    primary, shadow = answer_of(job.primary_reply), answer_of(reply)
    tolerance = tolerances.get(job.model) or Tolerance()
    return Outcome(compare(primary, shadow, tolerance), made, (primary, shadow))


def decoded_body(reply: Reply) -> bytes:
    """A pass-through reply's bytes without their Content-Encoding, for comparing (as
    received when the coding is unknown or the bytes are not in it)."""
    coding = content_coding(reply.headers)  # a translated reply has no headers at all
    if coding is None:
        return reply.body
    try:
        decoded = decode_content(coding, reply.body)
    except (zlib.error, BodyTooLarge):
        return reply.body
    return reply.body if decoded is None else decoded


def answer_of(reply: Reply) -> Answer:
    return Answer(reply.status, decoded_body(reply))
