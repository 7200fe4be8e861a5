"""The MLflow 2.x / 3.x side of the protocol: build request bodies, read replies and errors.

Pure functions. No I/O, no logging. The texts below are the new servers' own (§3.2, §6.2),
matched by prefix because the rest of each message embeds the input's repr.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from proxy import jsoncodec
from proxy.config.backends import DEPTH_CEILING
from proxy.errors import LimitExceeded, UpstreamProtocolError
from proxy.protocol.limits import WorkLimits, check_json_depth

CONTENT_TYPE_JSON: Final = "application/json"
CONTENT_TYPE_CSV: Final = "text/csv"

DATAFRAME_SPLIT: Final = "dataframe_split"
DATAFRAME_RECORDS: Final = "dataframe_records"
PREDICTIONS: Final = "predictions"

# §6.4 M1: a predict-time MlflowException on 2.22.5 / 3.x (S22 L373-383), and the schema
# enforcement error inside it, whose tail is the 1.x message (frame/missing-column).
PREDICT_PREFIX: Final = "Failed to predict data '"
PREDICT_ERROR_SEPARATOR: Final = "\nError: "
SCHEMA_PREFIX: Final = "Failed to enforce schema of data '"
SCHEMA_ERROR_SEPARATOR: Final = "'. Error: "
# §6.4 M3: an exception from the model itself, the same text on every server (E8).
MODEL_ERROR_PREFIX: Final = "Encountered an unexpected error while evaluating the model"
# §6.4 M4: CSV parse failure; 2.22.5+ append ` Error: '<pandas error>'` (iris/empty-body-csv).
CSV_ERROR_PREFIX: Final = (
    "Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid CSV-formatted"
)
# §6.4 M2 excludes the request-parsing errors of §3.2 / §6.2 (2.0.1 and later wordings).
PARSE_ERROR_PREFIXES: Final = (
    "The input must be a JSON dictionary with exactly one of the input fields",
    "Invalid input.",
    "Failed to parse input",
    "Failed to parse data as TF serving input.",
    "Dataframe split format must have",
    "Dataframe records format must be a list of records",
    "Unrecognized content type parameters",
)
# §3.2 ≥ 2.21.0: the timeout middleware's body, not JSON despite `application/json` (M10).
TIMEOUT_TEXT: Final = "Request processing time exceeded limit"

_SPLIT_OPEN: Final = b'{"dataframe_split": '
_RECORDS_OPEN: Final = b'{"dataframe_records": '
_MLFLOW_ERROR_KEYS: Final = frozenset({"error_code", "message"})
# A reply is rendered by the stdlib encoder, one recursion frame per level (§5.3 step 1).
_REPLY_LIMITS: Final = WorkLimits(max_depth=DEPTH_CEILING)


def wrap_split(frame: bytes) -> bytes:
    """`{"dataframe_split": <frame>}` around a split-orient JSON text, left as sent (§4.1).

    The caller has validated `frame` as one JSON object: wrapping its bytes keeps number
    spelling, key order and NaN tokens exactly, and costs no serialisation.
    """
    return _SPLIT_OPEN + frame + b"}"


def wrap_records(records: bytes) -> bytes:
    """`{"dataframe_records": <records>}` around a validated JSON list text (§4.1)."""
    return _RECORDS_OPEN + records + b"}"


def encode(payload: Any) -> bytes:
    """Any new-protocol body, serialised as `json.dumps` with `allow_nan` (§4)."""
    return jsoncodec.dumps_legacy(payload)


def encode_split_rows(columns: list[str], chunks: Iterable[list[tuple[Any, ...]]]) -> bytearray:
    """`encode({"dataframe_split": {"columns": columns, "data": rows}})`, byte for byte, for
    rows that come a chunk at a time (§4.1 L-CSV `split`), so they never exist all at once.
    """
    head = _SPLIT_OPEN + b'{"columns": ' + encode(columns) + b', "data": '
    return jsoncodec.dumps_legacy_list(chunks, head, b"}}")


def read_predictions(body: bytes) -> Any:
    """The `predictions` of a 2.x / 3.x success body (§5.2, §5.3 step 1).

    Parsed so that key order, int vs float and integers beyond 64 bits survive the
    re-serialisation, and bare NaN tokens are accepted. Other top-level keys are ignored
    (§5.3 step 2).

    Raises:
        UpstreamProtocolError: not JSON, or not an object with `predictions` (§5.3 step 4),
            or nested deeper than the proxy can render (`config.backends.DEPTH_CEILING`).
    """
    try:
        reply = jsoncodec.loads_exact(body)
        check_json_depth(body, reply, _REPLY_LIMITS)
    except (ValueError, LimitExceeded):
        raise UpstreamProtocolError() from None
    if not isinstance(reply, dict) or PREDICTIONS not in reply:
        raise UpstreamProtocolError()
    return reply[PREDICTIONS]


@dataclass(frozen=True, slots=True)
class UpstreamError:
    """An MLflow-shaped JSON error body from the new side (§6, §6.2, §6.3).

    `bare` is true when the body has only `error_code` and `message`: 2.0.1 wrote exactly
    that, 3.12+ add `sqlstate` / `error_class`, Databricks adds `details`.
    """

    error_code: str | None
    message: str
    stack_trace: str | None
    bare: bool


def read_error(body: bytes) -> UpstreamError | None:
    """The error in an upstream body, or None when it is not a JSON object with a message."""
    try:
        reply = jsoncodec.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(reply, dict) or not isinstance(reply.get("message"), str):
        return None
    error_code = reply.get("error_code")
    stack_trace = reply.get("stack_trace")
    return UpstreamError(
        error_code=error_code if isinstance(error_code, str) else None,
        message=reply["message"],
        stack_trace=stack_trace if isinstance(stack_trace, str) else None,
        bare=reply.keys() <= _MLFLOW_ERROR_KEYS,
    )


def is_timeout_body(body: bytes) -> bool:
    """Whether a body is the 2.21+ timeout middleware's text (§3.2, §6.4 M10)."""
    return body.strip() == TIMEOUT_TEXT.encode()


def is_parse_error(message: str) -> bool:
    """Whether a message is one of the new side's request-parsing errors (§3.2, §6.2)."""
    return message.startswith(PARSE_ERROR_PREFIXES)


def predict_error_message(message: str) -> str:
    """The 1.x-style message inside a 2.x / 3.x predict error (§6.4 M1).

    The text after the first `\\nError: `; if that is a schema-enforcement error, the text
    after its last `'. Error: ` (`Model is missing inputs ['petal_width'].`,
    frame/missing-column). A message without the separator is returned unchanged.
    """
    _, found, tail = message.partition(PREDICT_ERROR_SEPARATOR)
    if not found:
        return message
    if tail.startswith(SCHEMA_PREFIX):
        _, found, inner = tail.rpartition(SCHEMA_ERROR_SEPARATOR)
        if found:
            return inner
    return tail
