"""The readiness probe's one I/O: a legacy request, made up from `rollout.probe`, sent
through the translating path to the model's serverless endpoint.

It goes exactly as a legacy client's request routed to serverless would
(`exchange.send(..., Backend.SERVERLESS, ...)`, §2–§6): the same translation, headers,
pools and credentials. It has no client: no client headers but its Content-Type, a
request id of its own, and none of what a client's request feeds (no record, shadow,
payload recording, gate window or client metrics). The verdict is
`proxy.cutover.probe`'s; the controller and the admin API receive `prober(...)`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from urllib.parse import quote

import anyio

from proxy import exchange
from proxy.config import ModelConfig
from proxy.config.cutover import ProbeConfig
from proxy.credentials import Credentials
from proxy.cutover.probe import Probe, ProbeResult, answered, timed_out, unreachable
from proxy.errors import ProxyError, UpstreamConnectError
from proxy.models import Backend
from proxy.protocol import paths
from proxy.upstream.pools import Pools

LOGGER = logging.getLogger("serving_proxy.cutover")
# The version segment of the probe's URL when the model names no stage or version.
FALLBACK_SEGMENT = "1"


def url_segment(model: ModelConfig) -> str:
    """The `<version-or-stage>` a probe's legacy URL names: `Production` if the model has
    that stage, else its last listed version, else its first stage, else `1`."""
    if "Production" in model.stages:
        return "Production"
    if model.versions:
        return model.versions[-1]
    return next(iter(model.stages), FALLBACK_SEGMENT)


def probe_inbound(name: str, model: ModelConfig, config: ProbeConfig) -> exchange.Inbound:
    """The probe as a legacy client's request to `/model/<name>/<segment>/invocations`.

    Raises:
        UnknownModel: the config cannot resolve the model's URL (a config bug).
    """
    segment = url_segment(model)
    ref = paths.resolve_legacy({name: model}, name, segment)
    path = f"/model/{name}/{segment}/invocations"
    return exchange.Inbound(
        ref,
        path,
        f"/model/{quote(name, safe='')}/{quote(segment, safe='')}/invocations",
        "",
        None,
        [("content-type", config.content_type)],
        config.body.encode("utf-8"),
        f"probe-{secrets.token_hex(12)}",
    )


def prober(pools: Pools, credentials: Credentials, clock: Callable[[], float] = time.time) -> Probe:
    """The `Probe` the cutover is given: sends a model's probe with these pools."""

    async def probe(name: str, config: ProbeConfig) -> ProbeResult:
        model = pools.config.models[name]
        try:
            inbound = probe_inbound(name, model, config)
            with anyio.fail_after(config.timeout_s):
                reply = await exchange.send(
                    inbound, Backend.SERVERLESS, pools, credentials, exchange.Trace()
                )
        except TimeoutError:
            return timed_out(config, clock())
        except UpstreamConnectError as exc:
            return unreachable(exc.message, clock())
        except ProxyError as exc:
            # What a client sending this body would have got: a translation refusal (a
            # probe body the model cannot take) or the upstream's failure, in 1.x shape.
            reply = exc.to_reply()
        except Exception as exc:
            LOGGER.exception("%s: the readiness probe could not be sent", name)
            return unreachable(type(exc).__name__, clock())
        return answered(config, reply.status, reply.content_type, reply.body, clock())

    return probe
