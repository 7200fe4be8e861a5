"""One JSON line per request, however it ended. Never a body, never a token.

The line is built from the `ExchangeRecord` only, and the record holds neither bodies nor
headers, so nothing sensitive can reach the log by accident.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from proxy import jsoncodec
from proxy.telemetry.record import ExchangeRecord

LOGGER = logging.getLogger("serving_proxy.access")


def configure_logging(level: str) -> None:
    """Every `serving_proxy` logger of this process to stderr at `level`, the message alone
    on its line: access-log lines are JSON already. Called by `serve` and by the shadow
    worker process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("serving_proxy")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def outcome(record: ExchangeRecord) -> str:
    """A short outcome flag: `OK`; `UE`, the upstream answered with an error status; `LE`,
    the proxy's own endpoints (admin, metrics) refused; `NS`, no response was started;
    or the local reply's Envoy-style flag (`NR`, `UT`, `UF`, `PTL`, `BUG`, …; `proxy.errors`).
    """
    if record.flag != "-":
        return record.flag
    if record.status == 0:
        return "NS"
    if record.status < 400:
        return "OK"
    return "LE" if record.backend is None else "UE"


_second: list[Any] = [None, ""]  # the last whole second formatted, and its text


def iso_time(epoch_s: float) -> str:
    """UTC, millisecond precision: `2026-11-27T02:13:50.123Z`."""
    whole = int(epoch_s)
    if _second[0] != whole:
        # strftime costs more than the rest of the line: once per second is enough.
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    return f"{_second[1]}.{int((epoch_s - whole) * 1000):03d}Z"


def fields(
    record: ExchangeRecord, now: float | None = None, replica_id: str | None = None
) -> dict[str, Any]:
    """The access-log line of one finished request, as a JSON-ready dict; `replica_id`
    names the replica that served it, so that a fleet's lines can be told apart.

    The client appears as its key, hashed unless the config lets a header value show (an
    address is personal data, an Authorization value a secret), and as the identity
    `client_auth` proved, which the operator or the workspace named.
    """
    upstream_s = record.upstream_s
    return {
        "time": iso_time(time.time() if now is None else now),
        "replica_id": replica_id,
        "request_id": record.request_id,
        "method": record.method,
        "path": record.path,
        "client_key": record.client_key,
        "identity": record.identity,
        "model": record.model,
        "version": record.version,
        "legacy_format": record.legacy_format,
        "backend": None if record.backend is None else str(record.backend),
        "status": record.status,
        "outcome": outcome(record),
        "flag": record.flag,
        "upstream_ms": None if upstream_s is None else round(upstream_s * 1e3, 3),
        "translate_ms": round(record.translate_s * 1e3, 3),
        "proxy_ms": round((record.total_s - (upstream_s or 0.0)) * 1e3, 3),
        "total_ms": round(record.total_s * 1e3, 3),
        "detail": record.detail,
        "retries": list(record.retries),
        "retry_stop": record.retry_stop,
        "held_ms": round(record.held_s * 1e3, 3),
        "spill": record.spill,
        "queued_ms": round(record.queued_s * 1e3, 3),
        "queue": record.queue,
    }


def emit(record: ExchangeRecord, *, enabled: bool = True, replica_id: str | None = None) -> None:
    """Write the line; with the access log off, still one line for every failure."""
    failed = record.status >= 500 or record.flag != "-"
    if not enabled and not failed:
        return
    level = logging.WARNING if record.status >= 500 else logging.INFO
    if LOGGER.isEnabledFor(level):
        line = jsoncodec.dumps(fields(record, replica_id=replica_id)).decode()
        # Not LOGGER.log: it walks the stack for the caller's file and line (findCaller),
        # which no access line shows, and costs a large share of the line per request.
        # `handle` still applies the logger's filters, handlers and propagation.
        LOGGER.handle(LOGGER.makeRecord(LOGGER.name, level, __file__, 0, line, (), None))
