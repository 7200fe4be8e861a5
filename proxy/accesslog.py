"""One JSON line per request, however it ended. Never a body, never a token.

The line is built from the `ExchangeRecord` only, and the record holds neither bodies nor
headers, so nothing sensitive can reach the log by accident.
"""

from __future__ import annotations

import logging
from typing import Any

from proxy import jsoncodec
from proxy.models import ExchangeRecord

LOGGER = logging.getLogger("serving_proxy.access")


def fields(record: ExchangeRecord) -> dict[str, Any]:
    """The access-log line of one finished request, as a JSON-ready dict."""
    return {
        "request_id": record.request_id,
        "method": record.method,
        "path": record.path,
        "client": record.client,
        "model": record.model,
        "version": record.version,
        "legacy_format": record.legacy_format,
        "backend": None if record.backend is None else str(record.backend),
        "status": record.status,
        "flag": record.flag,
        "upstream_ms": None if record.upstream_s is None else round(record.upstream_s * 1e3, 3),
        "translate_ms": round(record.translate_s * 1e3, 3),
        "total_ms": round(record.total_s * 1e3, 3),
        "detail": record.detail,
    }


def emit(record: ExchangeRecord, *, enabled: bool = True) -> None:
    """Write the line; with the access log off, still one line for every failure."""
    failed = record.status >= 500 or record.flag != "-"
    if not enabled and not failed:
        return
    level = logging.WARNING if record.status >= 500 else logging.INFO
    if LOGGER.isEnabledFor(level):
        LOGGER.log(level, jsoncodec.dumps(fields(record)).decode())
