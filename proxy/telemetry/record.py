"""The one record the proxy keeps per request, and what is read straight off it.

Pure: no I/O. The record holds neither bodies nor headers, so nothing built from it (the
access log, the metrics, the statistics, the Server-Timing header) can leak one.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.models import Backend


@dataclass(slots=True)
class ExchangeRecord:
    """What is known about one request, filled in as it moves through the pipeline.

    Opened and emitted exactly once by `RequestContextMiddleware` (architecture §1.1.3):
    every request ends with one status and, for local replies, one flag.
    """

    request_id: str
    method: str
    path: str
    started: float
    client: str | None = None
    # The client key as reports may show it: hashed, or a header value the config allows.
    client_key: str | None = None
    # Who `client_auth` proved the client to be (a tokens-file name, a workspace user or
    # service principal); None when clients are not asked.
    identity: str | None = None
    model: str | None = None
    version: str | None = None
    legacy_format: str | None = None
    backend: Backend | None = None
    # The client's sticky bucket (None: no key), why the backend was chosen (`weight`,
    # `no-key`, `override`, `only-serverless`) and the backend shadowed, if any: a report
    # must be able to say why a client landed where it did.
    bucket: int | None = None
    route_reason: str | None = None
    shadow: Backend | None = None
    status: int = 0
    flag: str = "-"
    upstream_s: float | None = None
    translate_s: float = 0.0
    total_s: float = 0.0
    detail: str | None = None
    # When the endpoint is slow, cold, rate-limited or gone (README): the reason of each
    # retry (`429`, `503`, `504`, `connect`), why retrying stopped with retries left
    # (`budget_s`, `max_attempts`, `retry_budget`, `retry_after`), the time held for a
    # cold start, why the request spilled back to legacy (a retry reason or
    # `cold_start`), and the model queue: the wait and how it ended (`waited`, `full`,
    # `timeout`).
    retries: tuple[str, ...] = ()
    retry_stop: str | None = None
    held_s: float = 0.0
    spill: str | None = None
    queued_s: float = 0.0
    queue: str | None = None


_TIMING_DESC: dict[Backend | None, bytes] = {b: f';desc="{b}"'.encode() for b in Backend}


def server_timing(record: ExchangeRecord, now: float) -> bytes:
    """The W3C Server-Timing value, in ms, as the response starts: `proxy` is the proxy's
    own time so far (translation included), `upstream` the wait on the backend it names,
    `translate` the translation alone."""
    # Bytes %-formatting: it runs on every response, and skips building and encoding a str.
    upstream = record.upstream_s
    own = now - record.started - (upstream or 0.0)
    if own < 0.0:
        own = 0.0  # never negative: the upstream wait is timed apart and may overshoot
    value = b"proxy;dur=%.3f" % (own * 1e3)
    if upstream is not None:
        desc = _TIMING_DESC.get(record.backend, b"")
        value += b", upstream;dur=%.3f%s" % (upstream * 1e3, desc)
    if record.translate_s > 0:
        value += b", translate;dur=%.3f" % (record.translate_s * 1e3)
    if record.retries:
        value += b', retry;desc="%d"' % len(record.retries)
    if record.held_s > 0:
        value += b", hold;dur=%.3f" % (record.held_s * 1e3)
    if record.queued_s > 0:
        value += b", queue;dur=%.3f" % (record.queued_s * 1e3)
    if record.spill is not None:
        value += b', spill;desc="legacy after %s"' % record.spill.encode()
    return value
