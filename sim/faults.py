"""The fault knobs of a simulator: how it misbehaves, validated in full before use. Pure."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Faults:
    """How the simulator misbehaves; every field off by default.

    Attributes:
        delay_ms: added before every answer.
        jitter_ms: up to this much more, uniform, from the seeded RNG.
        status: answer every request with this status and an MLflow-2-style JSON error
            (narrowed by `status_times` and `status_rate`).
        status_times: answer only the next this many requests with `status`, then serve
            (counted from when the faults were set); null: every request.
        status_rate: this share of requests (seeded) is answered with `status`.
        retry_after: the `Retry-After` header value of the `status` answers, if any.
        fail_rate: this share of requests (seeded) is answered 500.
        malformed: answer 200 with a body that is not JSON.
        drop: close the connection without any HTTP response (real sockets only: it relies
            on uvicorn closing the transport; in-process transports raise instead).
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    status: int | None = None
    status_times: int | None = None
    status_rate: float = 1.0
    retry_after: str | None = None
    fail_rate: float = 0.0
    malformed: bool = False
    drop: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delay_ms) and self.delay_ms >= 0):
            raise ValueError("delay_ms must be a finite number >= 0")
        if not (math.isfinite(self.jitter_ms) and self.jitter_ms >= 0):
            raise ValueError("jitter_ms must be a finite number >= 0")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code (100-599) or null")
        if self.status_times is not None and self.status_times < 0:
            raise ValueError("status_times must be an integer >= 0 or null")
        if not 0.0 <= self.status_rate <= 1.0:
            raise ValueError("status_rate must be between 0 and 1")
        if self.retry_after is not None and (
            not self.retry_after.isprintable() or not self.retry_after.isascii()
        ):
            raise ValueError("retry_after must be printable ASCII (a header value)")

    @classmethod
    def from_json(cls, data: Any) -> Faults:
        """Validate a parsed `PUT /_sim/faults` body; absent fields take their defaults.

        Raises:
            ValueError: naming the first bad field.
        """
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(unknown)}")
        for name in ("delay_ms", "jitter_ms", "fail_rate", "status_rate"):
            value = data.get(name, 0.0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number")
        for name in ("malformed", "drop"):
            if not isinstance(data.get(name, False), bool):
                raise ValueError(f"{name} must be true or false")
        status = data.get("status")
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
            raise ValueError("status must be an integer or null")
        times = data.get("status_times")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int)):
            raise ValueError("status_times must be an integer or null")
        retry_after = data.get("retry_after")
        if retry_after is not None and not isinstance(retry_after, str):
            raise ValueError("retry_after must be a string or null")
        return cls(
            delay_ms=float(data.get("delay_ms", 0.0)),
            jitter_ms=float(data.get("jitter_ms", 0.0)),
            status=status,
            status_times=times,
            status_rate=float(data.get("status_rate", 1.0)),
            retry_after=retry_after,
            fail_rate=float(data.get("fail_rate", 0.0)),
            malformed=data.get("malformed", False),
            drop=data.get("drop", False),
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
