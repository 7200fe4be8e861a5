"""The cutover's sections: client keys, route overrides, shadowing, comparison and the
rollout with its gates. Pure."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, field_validator

from proxy.config.base import Duration, EnvName, Frozen, Percent, Share

DEFAULT_SHADOW_CONCURRENCY = 16
DEFAULT_MISMATCHES_KEPT = 50
DEFAULT_ABS_TOL = 1e-6
DEFAULT_REL_TOL = 1e-6
DEFAULT_GATE_MIN_SAMPLES = 20
DEFAULT_MAX_ERROR_RATE = 0.01


class ClientKeyConfig(Frozen):
    """What makes a client sticky, tried in this order; none found: per request.

    The address is `scope["client"]`, which uvicorn sets from X-Forwarded-For only for the
    peers in `server.trusted_proxies`. `identity`: the client `client_auth` proved, tried
    first.
    """

    identity: bool = False
    header: str | None = None
    authorization: bool = False
    address: bool = True

    @field_validator("header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", value):
            raise ValueError("must be an HTTP header name")
        return None if value is None else value.lower()


class RouteOverrideConfig(Frozen):
    """Clients allowed to choose their backend with `X-Serving-Proxy-Route`: their proven
    identities under `client_auth`, else their addresses."""

    clients: tuple[str, ...] = ()


class CompareConfig(Frozen):
    """How a shadow answer is compared with the primary one."""

    abs_tol: float = Field(DEFAULT_ABS_TOL, ge=0)
    rel_tol: float = Field(DEFAULT_REL_TOL, ge=0)
    # `$.a[*].b` paths (`*` any key or index), or a bare key name matched at any depth.
    ignore: tuple[str, ...] = ()
    ignore_order: bool = False


class ShadowConfig(Frozen):
    """Process-wide shadowing limits; the share per model is `shadow_percent`."""

    max_concurrency: int = Field(DEFAULT_SHADOW_CONCURRENCY, ge=1)
    keep_mismatches: int = Field(DEFAULT_MISMATCHES_KEPT, ge=0)
    # Off: a mismatch keeps the differing field's two values only, never the bodies.
    keep_payloads: bool = False
    # Where shadow calls and comparisons run: `process`, a worker process of their own
    # (`proxy.shadowworker`), so their CPU never stalls the event loop that answers
    # clients; `inline`, tasks on that event loop (no extra process).
    isolation: Literal["process", "inline"] = "process"


class ErrorRateGate(Frozen):
    max: Share = DEFAULT_MAX_ERROR_RATE
    min_samples: int = Field(DEFAULT_GATE_MIN_SAMPLES, ge=1)


class LatencyGate(Frozen):
    """Serverless p99 over legacy p99; a p99 at or under `floor_ms` always passes."""

    max: float = Field(1.5, gt=0)
    min_samples: int = Field(DEFAULT_GATE_MIN_SAMPLES, ge=1)
    floor_ms: float = Field(0.0, ge=0)


class ParityGate(Frozen):
    min: Share = 0.99
    min_samples: int = Field(DEFAULT_GATE_MIN_SAMPLES, ge=1)


class Gates(Frozen):
    error_rate: ErrorRateGate | None = ErrorRateGate()
    p99_ratio: LatencyGate | None = None
    parity: ParityGate | None = None


class ProbeConfig(Frozen):
    """`rollout.probe:`: a legacy request sent through the translating path to the new
    endpoint before each step up; the step waits until it answers `expect_status`."""

    content_type: str
    body: str
    expect_status: int = Field(200, ge=100, le=599)
    timeout_s: float = Field(30.0, gt=0)


class RolloutConfig(Frozen):
    """Progressive rollout: step up each `interval` while every gate passes (and the
    `probe`, when given, answers as expected)."""

    steps: tuple[Percent, ...]
    interval: Duration
    # The sliding window the gates read; the interval when not given.
    window: Duration | None = None
    on_failure: Literal["zero", "last_good"] = "zero"
    gates: Gates = Gates()
    probe: ProbeConfig | None = None

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("must list at least one step")
        if list(value) != sorted(set(value)):
            raise ValueError("must be strictly increasing")
        return value

    @property
    def window_s(self) -> float:
        return self.window if self.window is not None else self.interval


DEFAULT_LEADER_TTL_S = 10.0


class FleetConfig(Frozen):
    """`cutover:`, what the replicas of one deployment share beyond the state itself."""

    # The rollout leader's lease: renewed every third of it; a leader that dies is
    # replaced within about this long.
    leader_ttl_s: float = Field(DEFAULT_LEADER_TTL_S, ge=1.0, le=300.0)


class RedisConfig(Frozen):
    """How to reach a `redis://` state store beyond its URL: the password from the
    environment, so that it need not sit in the config file's URL."""

    password_env: EnvName | None = None


def url_has_password(url: str) -> bool:
    """Whether a `state:` URL carries a password (`redis://:pw@host`, `unix://...?password=`).

    With `redis.password_env` as well, which one counts would be a guess (redis-py lets
    the URL's win), so the config refuses the pair.
    """
    if "://" not in url:
        return False
    parts = urlsplit(url)
    return bool(parts.password) or "password" in parse_qs(parts.query)
