"""The readiness probe before a step up: its result, how the result reads, and whether a
step may go ahead. Pure: no I/O and no clock (the caller passes the times).

A probe is one legacy request (`rollout.probe`) sent through the translating path to the
model's serverless endpoint, as a client's request routed there would go; the sending is
the app's (`proxy.probing`), injected into the controller as a `Probe`. A step up goes
ahead only on a probe that answered `expect_status` for the state the gates judged; a
failure holds the step, and the probe is tried again at a later tick (never sooner than
`retry_after_s`, so a broken endpoint is not probed at the poll rate).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from proxy import jsoncodec
from proxy.config.cutover import ProbeConfig

# The endpoint's message, or its body, is cut to this many characters in a note.
DETAIL_CHARS = 100
# The shortest pause between a failed probe and the next one; a shorter rollout interval
# shortens it (`retry_after_s`).
PROBE_RETRY_S = 5.0

ProbeKind = Literal["answered", "timeout", "unreachable"]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's outcome.

    Attributes:
        ok: the translated answer's status was the expected one, in time.
        kind: `answered` (an HTTP answer, `status` set), `timeout` (none within
            `timeout_s`) or `unreachable` (no answer: refused, reset, unusable).
        at: when it finished (epoch seconds).
        status: the translated answer's status, as a legacy client would get it.
        detail: the 1.x error message, the start of the body, the timeout's length or
            the connection error, at most `DETAIL_CHARS` characters.
    """

    ok: bool
    kind: ProbeKind
    at: float
    status: int | None = None
    detail: str = ""

    @property
    def note(self) -> str:
        """One line for `status` and the admin API: `probe failed: 503 ... at <time>`."""
        when = iso_time(self.at)
        if self.ok:
            return f"probe ok at {when}"
        if self.kind == "timeout":
            return f"probe failed: timeout after {self.detail} at {when}"
        if self.kind == "unreachable":
            return f"probe failed: connection error: {self.detail} at {when}"
        detail = f" {self.detail}" if self.detail else ""
        return f"probe failed: {self.status}{detail} at {when}"

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "kind": self.kind,
            "status": self.status,
            "at": self.at,
            "note": self.note,
        }


# Sends the model's probe and says how it went; never raises (a failure is a result).
Probe = Callable[[str, ProbeConfig], Awaitable[ProbeResult]]


def iso_time(at: float) -> str:
    """Epoch seconds as UTC ISO 8601 to the second, as the audit log's readers expect."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def answered(
    config: ProbeConfig, status: int, content_type: str | None, body: bytes, at: float
) -> ProbeResult:
    """The result of a translated answer: ok iff `status` is `config.expect_status`."""
    if status == config.expect_status:
        return ProbeResult(True, "answered", at, status)
    return ProbeResult(False, "answered", at, status, excerpt(content_type, body))


def timed_out(config: ProbeConfig, at: float) -> ProbeResult:
    return ProbeResult(False, "timeout", at, None, f"{config.timeout_s:g} s")


def unreachable(message: str, at: float) -> ProbeResult:
    return ProbeResult(False, "unreachable", at, None, _clean(message))


def excerpt(content_type: str | None, body: bytes) -> str:
    """The 1.x error's `message` (§6.4), else the start of the body as text."""
    if content_type is not None and "json" in content_type.lower():
        try:
            data = jsoncodec.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return _clean(data["message"])
    return _clean(body[: DETAIL_CHARS * 4].decode("utf-8", "replace"))


def _clean(text: str) -> str:
    """One line of printable text, cut to `DETAIL_CHARS`: it goes into a table cell."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat[:DETAIL_CHARS]


def retry_after_s(interval_s: float) -> float:
    """How long a failed probe holds the next one."""
    return min(PROBE_RETRY_S, interval_s)


@dataclass(frozen=True, slots=True)
class BeforeStep:
    """What to do when the gates call for a step up: `probe` now, or `hold` and why."""

    kind: Literal["probe", "hold"]
    reason: str


def before_step(
    step: float, last: ProbeResult | None, probing: bool, now: float, retry_s: float
) -> BeforeStep:
    """Whether to send a probe for a step to `step` percent now.

    A step up never goes ahead here: it waits for a probe sent for it (`probing` while
    that probe is in flight). After a failure the next probe waits `retry_s`, and the
    reason keeps saying why the step is held.
    """
    why = f"probing the endpoint before the step to {step:g}%"
    if last is not None and not last.ok:
        if not probing and now < last.at + retry_s:
            return BeforeStep("hold", f"{last.note}; next probe in {last.at + retry_s - now:.0f} s")
        why = f"{why}; last {last.note}"
    return BeforeStep("hold" if probing else "probe", why)
