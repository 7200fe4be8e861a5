"""legacy ⇄ new translation: the contract of `shared/docs/protocols.md` §4, §5.3 and §6.4.

Pure functions. No I/O, no logging. The request side keeps the client's bytes wherever the
new body only wraps them (nothing a client sent is altered, and it is the cheap path); it
re-serialises only when the body must change.
"""

from __future__ import annotations

from enum import StrEnum
from http import HTTPStatus
from typing import Any, Final

from proxy import jsoncodec
from proxy.errors import E4_CSV, UpstreamProtocolError, mlflow_error_body
from proxy.models import (
    Body,
    CsvMode,
    LegacyFormat,
    LegacyRequest,
    Reply,
    UpstreamNan,
    V2Request,
)
from proxy.protocol import csvframe, legacy, v2

_FORWARDED_AS_IS: Final = frozenset({LegacyFormat.INSTANCES, LegacyFormat.INPUTS, LegacyFormat.V2})
_SPLIT_FORMATS: Final = frozenset({LegacyFormat.JSON_SPLIT, LegacyFormat.PANDAS_SPLIT})
_NON_FINITE_TOKENS: Final = (b"NaN", b"Infinity")


def legacy_to_v2(
    req: LegacyRequest,
    *,
    csv_mode: CsvMode = CsvMode.PASSTHROUGH,
    upstream_nan: UpstreamNan = UpstreamNan.KEEP,
) -> V2Request:
    """The new-protocol request for a validated legacy one (§4.1, §4.2).

    Content-Type is `application/json` for JSON bodies and `text/csv` for forwarded CSV;
    the legacy `format=` and `charset=` parameters are never forwarded (§3.1 refuses any
    parameter but charset, and the new side reads UTF-8 anyway).

    Args:
        req: a request that `legacy.parse_request` accepted.
        csv_mode: forward CSV bytes, or convert them to `dataframe_split` (§4.1 L-CSV).
        upstream_nan: keep bare NaN / ±Infinity tokens, or send them as `null` (§4.2).

    Raises:
        BadRequest: E4, when `csv_mode` is `split` and the CSV cannot be read.
    """
    nulls = upstream_nan is UpstreamNan.NULL
    if req.format is LegacyFormat.CSV:
        if csv_mode is CsvMode.PASSTHROUGH:
            return V2Request(v2.CONTENT_TYPE_CSV, req.body)
        columns, chunks = csvframe.read_csv_frame(req.body.decode("utf-8"), nulls=nulls)
        return _json(v2.encode_split_rows(columns, chunks))
    if nulls and _has_non_finite(req):
        return _json(v2.encode(jsoncodec.nan_to_null(_new_payload(req))))
    if req.format in _FORWARDED_AS_IS:
        return _json(req.body)
    if isinstance(req.payload, list):
        return _json(v2.wrap_records(req.body))
    if req.format in _SPLIT_FORMATS and "data" in req.payload:
        return _json(v2.wrap_split(req.body))
    if req.format is LegacyFormat.NUMPY_SPLIT and len(req.payload) == len(legacy.NUMPY_SPLIT_KEYS):
        return _json(v2.wrap_split(req.body))
    return _json(v2.encode(_new_payload(req)))


def _json(body: Body) -> V2Request:
    return V2Request(v2.CONTENT_TYPE_JSON, body)


def _has_non_finite(req: LegacyRequest) -> bool:
    # The byte test is the cheap filter; the walk rules out the tokens inside strings.
    return any(token in req.body for token in _NON_FINITE_TOKENS) and jsoncodec.has_non_finite(
        req.payload
    )


def _new_payload(req: LegacyRequest) -> Any:
    """The new-protocol value for a request whose body must change (§4.1).

    Re-read with `loads_exact` because this value is re-serialised: an integer beyond 64
    bits must not come back as a float.
    """
    payload = jsoncodec.loads_exact(req.body)
    if req.format in _FORWARDED_AS_IS:
        return payload
    if isinstance(payload, list):
        return {v2.DATAFRAME_RECORDS: payload}
    if req.format is LegacyFormat.PANDAS_RECORDS:
        # §4.1 L-REC: 1.30.1 also read an object of columns; the new side wants a frame.
        return {
            v2.DATAFRAME_SPLIT: {"columns": list(payload), "data": legacy.columns_to_rows(payload)}
        }
    if req.format is LegacyFormat.NUMPY_SPLIT:
        # §4.1 L-NPS: 1.30.1 ignored keys beyond these three; the new side refuses them.
        return {v2.DATAFRAME_SPLIT: {k: v for k, v in payload.items() if k in legacy.SPLIT_KEYS}}
    # §4.1: a split frame without `data` was a zero-row frame on 1.30.1; MLflow 3 needs it.
    return {v2.DATAFRAME_SPLIT: payload if "data" in payload else {**payload, "data": []}}


class ErrorRule(StrEnum):
    """The rows of §6.4, evaluated top to bottom."""

    PREDICT_ERROR = "M1"
    RAW_PREDICT_EXCEPTION = "M2"
    MODEL_ERROR = "M3"
    CSV_ERROR = "M4"
    VALIDATION_GAP = "M5"
    UNSUPPORTED_MEDIA_TYPE = "M6"
    UNAUTHORIZED = "M7"
    NOT_FOUND = "M8"
    RATE_LIMITED = "M9"
    TIMEOUT = "M10"
    UNAVAILABLE = "M11"
    SERVER_ERROR = "M12"
    PROTOCOL_ERROR = "M13"


def _match(status: int, body: bytes, err: v2.UpstreamError | None) -> ErrorRule:
    if err is not None:
        if err.message.startswith(v2.PREDICT_PREFIX):
            return ErrorRule.PREDICT_ERROR
        # M2 (revised): 400 only. A 5xx, even a JSON INTERNAL_ERROR, cannot be told apart
        # from an outage; as a 400 it would blame the client's input and hide the outage.
        if (
            status == 400
            and err.error_code not in (None, "BAD_REQUEST")
            and err.stack_trace is None
            and err.bare
            and not v2.is_parse_error(err.message)
        ):
            return ErrorRule.RAW_PREDICT_EXCEPTION
        if status == 400 and err.message.startswith(v2.MODEL_ERROR_PREFIX):
            return ErrorRule.MODEL_ERROR
        if status == 400 and err.message.startswith(v2.CSV_ERROR_PREFIX):
            return ErrorRule.CSV_ERROR
        if status == 400:
            return ErrorRule.VALIDATION_GAP
    if status == 415:
        return ErrorRule.UNSUPPORTED_MEDIA_TYPE
    if status in (401, 403):
        return ErrorRule.UNAUTHORIZED
    if status == 404:
        return ErrorRule.NOT_FOUND
    if status == 429:
        return ErrorRule.RATE_LIMITED
    if status == 504 or v2.is_timeout_body(body):
        return ErrorRule.TIMEOUT
    if status == 503:
        return ErrorRule.UNAVAILABLE
    if 500 <= status <= 599:
        return ErrorRule.SERVER_ERROR
    return ErrorRule.PROTOCOL_ERROR


def v2_to_legacy(
    status: int, content_type: str, body: bytes, *, wrapper_attr: str | None = None
) -> Reply:
    """The legacy reply for a new-protocol reply (§5.3 success, §6.4 errors).

    The rules read status and body only: 2.21+ label the non-JSON timeout text
    `application/json` (M10), so the Content-Type says nothing reliable. Error bodies keep
    `error_code`, `message` and, where a row says so, `stack_trace`; `sqlstate`,
    `error_class`, `details` and any other key are dropped. `Retry-After` (M9, M11) is the
    caller's to copy.

    Args:
        status: the upstream status.
        content_type: the upstream Content-Type (not used by any rule; see above).
        body: the upstream body.
        wrapper_attr: the route's `legacy_wrapper_attr` (§5.1, §5.3 step 3).

    Raises:
        UpstreamProtocolError: a 200 without `predictions` or not JSON (§5.3 step 4), a 415
            (M6) or any reply no row maps (M13).
    """
    if status == 200:
        return Reply(200, legacy.render_predictions(v2.read_predictions(body), wrapper_attr))
    err = v2.read_error(body)
    rule = _match(status, body, err)
    # "" when the body is not an MLflow error: the rows that need a message (M1-M5) only
    # match JSON errors, the others fall back to their own text.
    message = err.message if err is not None else ""
    stack_trace = err.stack_trace if err is not None else None
    if rule is ErrorRule.PREDICT_ERROR:
        return _error(400, "BAD_REQUEST", v2.predict_error_message(message))
    if rule in (ErrorRule.RAW_PREDICT_EXCEPTION, ErrorRule.VALIDATION_GAP):
        return _error(400, "BAD_REQUEST", message)
    if rule is ErrorRule.MODEL_ERROR:
        return _error(400, "BAD_REQUEST", message, stack_trace)
    if rule is ErrorRule.CSV_ERROR:
        return _error(400, "BAD_REQUEST", E4_CSV, stack_trace)
    if rule is ErrorRule.UNAUTHORIZED:
        if status == 401:
            return _error(401, "CUSTOMER_UNAUTHORIZED", message or "Unauthorized")
        return _error(403, "PERMISSION_DENIED", message or "Permission denied")
    if rule is ErrorRule.NOT_FOUND:
        return _error(404, "RESOURCE_DOES_NOT_EXIST", message or HTTPStatus(404).phrase)
    if rule is ErrorRule.RATE_LIMITED:
        return _error(429, "REQUEST_LIMIT_EXCEEDED", message or HTTPStatus(429).phrase)
    if rule is ErrorRule.TIMEOUT:
        return _error(504, "TEMPORARILY_UNAVAILABLE", v2.TIMEOUT_TEXT)
    if rule is ErrorRule.UNAVAILABLE:
        return _error(503, "TEMPORARILY_UNAVAILABLE", message or HTTPStatus(503).phrase)
    if rule is ErrorRule.SERVER_ERROR:
        return _error(status, "INTERNAL_ERROR", message or f"Upstream error {status}")
    # M6: the new side refused the Content-Type the proxy chose, a proxy bug; M13: a reply
    # outside the protocol. Neither is the client's to see as is.
    raise UpstreamProtocolError()


def _error(status: int, error_code: str, message: str, stack_trace: str | None = None) -> Reply:
    return Reply(status, mlflow_error_body(error_code, message, stack_trace))
