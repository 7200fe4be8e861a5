"""MLflow 1.30.1's side of the protocol: read a request as its scoring server did, render replies.

Pure functions. No I/O, no logging. Every rule cites `shared/docs/protocols.md`; a request
that 1.30.1 refused for a reason visible in the request is refused here with 1.30.1's reply
(§4), so the new side never sees it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from enum import Enum
from typing import Any, Final

from proxy import jsoncodec
from proxy.errors import (
    E1_MALFORMED_JSON,
    E2_NOT_LIST_OR_DICT,
    E3_PANDAS,
    E5_NUMPY,
    E6A_SIGNATURE_NAME,
    E6B_KEYS,
    E6C_TF_PARSE,
    E6D_LENGTHS,
    BadRequest,
    MissingContentType,
    UnsupportedMediaType,
)
from proxy.models import ContentType, LegacyFormat, LegacyRequest
from proxy.protocol.csvframe import csv_rows
from proxy.protocol.limits import WorkLimits, check_columns, check_json_depth, check_rows

CONTENT_TYPE_CSV: Final = "text/csv"
CONTENT_TYPE_JSON: Final = "application/json"
CONTENT_TYPE_JSON_SPLIT_NUMPY: Final = "application/json-numpy-split"
FORMAT_PANDAS_SPLIT: Final = "pandas-split"
FORMAT_PANDAS_RECORDS: Final = "pandas-records"

# pandas' split orient (`check_keys_split`, §2.4) and numpy-split's required keys (§2.4).
SPLIT_KEYS: Final = frozenset({"columns", "index", "data"})
NUMPY_SPLIT_KEYS: Final = ("index", "columns", "data")

# The new protocol's envelope keys (§3.2), recognised only under `accept_v2_bodies` (§4.1).
V2_FORMAT_KEYS: Final = frozenset({"dataframe_split", "dataframe_records", "instances", "inputs"})
V2_PARAMS_KEY: Final = "params"

# The config's defaults, for a caller that passes no limits of its own.
DEFAULT_LIMITS: Final = WorkLimits()


class _Reader(Enum):
    """The five parsers of §2.2, chosen from the Content-Type alone."""

    CSV = "csv"
    JSON = "json"
    SPLIT = "split"
    RECORDS = "records"
    NUMPY_SPLIT = "numpy-split"


def parse_content_type(value: str | None) -> ContentType:
    """Read a Content-Type header exactly as MLflow 1.30.1 did (§2.1).

    `split(";")`, each part stripped, parameters split with `partition("=")`: names and the
    media type are case-sensitive, only the charset value is lower-cased, a repeated
    parameter keeps its last value, an empty `format=` is no format. An empty header is
    not a missing one: it parses to media type `""`, which `parse_request` refuses with
    E10 ``Got ''``.

    Raises:
        MissingContentType: no header at all (1.30.1 crashed into Flask's 500 page, E11).
    """
    if value is None:
        raise MissingContentType()
    return _parse_content_type(value)


# Clients send a handful of distinct headers, each on every request: parse each once.
@functools.lru_cache(maxsize=256)
def _parse_content_type(value: str) -> ContentType:
    parts = [part.strip() for part in value.split(";")]
    params: dict[str, str] = {}
    for part in parts[1:]:
        key, _, param = part.partition("=")
        params[key] = param
    return ContentType(
        raw=value,
        mime=parts[0],
        charset=params.get("charset", "utf-8").lower(),
        format=params.get("format") or None,
    )


def parse_request(
    content_type: str | None,
    body: bytes,
    *,
    accept_v2_bodies: bool = False,
    limits: WorkLimits = DEFAULT_LIMITS,
) -> LegacyRequest:
    """Validate a legacy request with the rules of 1.30.1 (§2.1–§2.5, §4.1).

    The order is 1.30.1's: Content-Type, charset (E9) before format, media type and format
    (E10), UTF-8 decoding of the body (E11), then the chosen parser. JSON is parsed once,
    NaN-tolerant; of CSV only the header and, near the cell limit, the rows are read
    (§4.1: nothing else to check before forwarding). Then `limits`: the proxy's own, after
    1.30.1's rules and before any translation work.

    Args:
        content_type: the header as received, or None when the request had none.
        body: the body as received.
        accept_v2_bodies: forward a well-formed new-protocol envelope sent under plain
            `application/json` instead of refusing it as 1.30.1 did (§4.1, §8.8).
        limits: the frame's columns and cells, and the JSON's depth (`limits.py`).

    Raises:
        MissingContentType: no Content-Type, or a body that is not UTF-8 (E11).
        UnsupportedMediaType: a charset other than UTF-8 (E9), or a media type / format
            1.30.1 did not serve (E10).
        BadRequest: E1–E6 with 1.30.1's text.
        LimitExceeded: over one of `limits`.
    """
    ctype = parse_content_type(content_type)
    if ctype.charset != "utf-8":
        raise UnsupportedMediaType.charset()
    reader = _reader(ctype)
    if reader is _Reader.CSV:
        _check_csv(_require_utf8(body), limits)
        return LegacyRequest(LegacyFormat.CSV, None, body, ctype)
    if reader is _Reader.JSON:
        payload = _load(body, E1_MALFORMED_JSON, limits)
        fmt = _infer(payload, accept_v2_bodies)
    elif reader is _Reader.SPLIT:
        payload = _load(body, _e3("split"), limits)
        if not isinstance(payload, dict) or not payload.keys() <= SPLIT_KEYS:
            raise BadRequest(_e3("split"))
        fmt = LegacyFormat.PANDAS_SPLIT
    elif reader is _Reader.RECORDS:
        payload = _load(body, _e3("records"), limits)
        if isinstance(payload, dict):
            column_length(payload)
        elif not isinstance(payload, list):
            raise BadRequest(_e3("records"))
        fmt = LegacyFormat.PANDAS_RECORDS
    else:
        payload = _load(body, E5_NUMPY, limits)
        if not isinstance(payload, dict) or not all(key in payload for key in NUMPY_SPLIT_KEYS):
            raise BadRequest(E5_NUMPY)
        fmt = LegacyFormat.NUMPY_SPLIT
    if not limits.bounds_frame_of(len(body)):
        _check_frame(fmt, payload, limits)
    return LegacyRequest(fmt, payload, body, ctype)


def _reader(ctype: ContentType) -> _Reader:
    """§2.2's dispatch; everything else is 415 E10 naming the header as received."""
    if ctype.format is None:
        if ctype.mime == CONTENT_TYPE_CSV:
            return _Reader.CSV
        if ctype.mime == CONTENT_TYPE_JSON:
            return _Reader.JSON
        if ctype.mime == CONTENT_TYPE_JSON_SPLIT_NUMPY:
            return _Reader.NUMPY_SPLIT
    elif ctype.mime == CONTENT_TYPE_JSON:
        if ctype.format == FORMAT_PANDAS_SPLIT:
            return _Reader.SPLIT
        if ctype.format == FORMAT_PANDAS_RECORDS:
            return _Reader.RECORDS
    raise UnsupportedMediaType.content_type(ctype.raw)


# Formatted once: the E3 text is the `_load` fallback message of every pandas request.
_E3 = {orient: E3_PANDAS.format(orient=orient) for orient in ("split", "records")}


def _e3(orient: str) -> str:
    return _E3[orient]


def _require_utf8(body: bytes) -> str:
    # 1.30.1 decoded the body before parsing and did not catch the error: Flask's 500 page.
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise MissingContentType("request body is not UTF-8") from None


def _load(body: bytes, invalid: str, limits: WorkLimits) -> Any:
    """Parse JSON once, or raise the reply 1.30.1 gave for this parser (`invalid`: E1/E3/E5).

    A body nested past `limits.max_depth` is refused whatever the parser: under plain JSON
    1.30.1's stdlib parser crashed into the 500 page on one nested past its recursion
    limit, and the proxy answers a 400 naming the limit instead.
    """
    try:
        payload = jsoncodec.loads(body)
    except UnicodeDecodeError:
        raise MissingContentType("request body is not UTF-8") from None
    except jsoncodec.JSONTooDeep:
        raise limits.too_deep() from None
    except ValueError:
        raise BadRequest(invalid) from None
    check_json_depth(body, payload, limits)
    return payload


# §3.2: what each new-protocol key holds, read by the legacy reader of the same shape.
_V2_FRAMES: Final = {
    "dataframe_split": LegacyFormat.PANDAS_SPLIT,
    "dataframe_records": LegacyFormat.PANDAS_RECORDS,
}


def _check_frame(fmt: LegacyFormat, payload: Any, limits: WorkLimits) -> None:
    """`limits` on the frame a validated body describes (`limits.py`), before it is read."""
    if fmt is LegacyFormat.V2:
        (key,) = payload.keys() & V2_FORMAT_KEYS
        if key not in _V2_FRAMES:
            fmt = LegacyFormat.INSTANCES
        else:
            fmt, payload = _V2_FRAMES[key], payload[key]
    if fmt in (LegacyFormat.INSTANCES, LegacyFormat.INPUTS):
        # Exactly one of the two keys by now (§2.5, §3.2); `params` may sit beside it.
        payload = payload.get("instances", payload.get("inputs"))
    if isinstance(payload, list):
        check_rows(payload, limits)
    elif fmt in (LegacyFormat.PANDAS_RECORDS, LegacyFormat.INPUTS) and isinstance(payload, dict):
        check_columns(payload, limits)
    elif isinstance(payload, dict):
        columns, data = payload.get("columns"), payload.get("data")
        width = len(columns) if isinstance(columns, list) else 0
        check_rows(data if isinstance(data, list) else [], limits, width)


def _check_csv(text: str, limits: WorkLimits) -> None:
    """`limits` on a CSV body: the header's width, then the rows, counted only when the
    lines could hold more cells than the limit (a short row is padded to the header's
    width, §2.4, so every row counts as that many cells).
    """
    # A cell may be empty, but each takes a separator or a line break: n characters hold
    # at most n + 1 columns and n + 1 rows.
    if limits.bounds_frame_of(len(text) + 1):
        return
    reader = csv_rows(text)
    header = next(reader, [])
    limits.check_frame(len(header), 0)
    # Every row after the header starts after a line break, "\n" or a lone "\r".
    if len(header) * (text.count("\n") + text.count("\r")) > limits.max_cells:
        limits.check_frame(len(header), sum(1 for _ in reader))


def _infer(payload: Any, accept_v2_bodies: bool) -> LegacyFormat:
    """§2.3: plain `application/json` is read by the shape of the decoded value."""
    if isinstance(payload, list):
        return LegacyFormat.JSON_RECORDS
    if not isinstance(payload, dict):
        raise BadRequest(E2_NOT_LIST_OR_DICT)
    if accept_v2_bodies and is_v2_envelope(payload):
        return LegacyFormat.V2
    if "instances" in payload or "inputs" in payload:
        return _tensor_format(payload)
    # 1.30.1 hands any other dict to pandas' split reader, which refuses unknown keys:
    # this is how a `{"dataframe_split": ...}` envelope becomes E3 (§4.1).
    if not payload.keys() <= SPLIT_KEYS:
        raise BadRequest(_e3("split"))
    return LegacyFormat.JSON_SPLIT


def is_v2_envelope(payload: dict[str, Any]) -> bool:
    """Whether a dict is a new-protocol body that 1.30.1 would have refused (§3.2, §4.1).

    Exactly one format key plus optional `params`, nothing else; `instances` / `inputs`
    alone are legacy tensor bodies too, so they count only together with `params`.
    """
    keys = payload.keys()
    if not keys <= V2_FORMAT_KEYS | {V2_PARAMS_KEY} or len(keys & V2_FORMAT_KEYS) != 1:
        return False
    return V2_PARAMS_KEY in keys or "dataframe_split" in keys or "dataframe_records" in keys


def _tensor_format(payload: dict[str, Any]) -> LegacyFormat:
    """§2.5: the key rules of `parse_tf_serving_input`, then what it refused before the model.

    Failures that depend on the model's signature (E6c for a cast) or happen in the model
    (ragged rows, §8.15) are left to the new side.
    """
    if "signature_name" in payload:
        raise BadRequest(E6A_SIGNATURE_NAME)
    keys = list(payload)
    if keys == ["instances"]:
        _check_instances(payload["instances"])
        return LegacyFormat.INSTANCES
    if keys == ["inputs"]:
        if isinstance(payload["inputs"], dict):
            _check_column_lengths(iter(payload["inputs"].values()))
        return LegacyFormat.INPUTS
    raise BadRequest(E6B_KEYS)


def _check_instances(items: Any) -> None:
    # 1.30.1 ran `len(items) > 0 and isinstance(items[0], dict)` inside its try: a value
    # without a length (number, bool, null) or a non-empty object fails there (E6c).
    if not isinstance(items, list | str | dict):
        raise BadRequest(E6C_TF_PARSE)
    if isinstance(items, dict):
        if items:
            raise BadRequest(E6C_TF_PARSE)
        return
    if not items or not isinstance(items[0], dict):
        return
    # Row objects are pivoted into columns; a row that is not an object has no `.items()`.
    counts: dict[str, int] = {}
    for row in items:
        if not isinstance(row, dict):
            raise BadRequest(E6C_TF_PARSE)
        for key in row:
            counts[key] = counts.get(key, 0) + 1
    if len(set(counts.values())) > 1:
        raise BadRequest(E6D_LENGTHS)


def _check_column_lengths(columns: Iterator[Any]) -> None:
    """E6d for `{"inputs": {name: [...], ...}}` with unequal lengths (§2.5).

    1.30.1 compared `len()` of each value in order and stopped at the first mismatch; a
    value without a length crashed it (a 500, not a rule anyone relied on), so checking
    stops there and the body is forwarded.
    """
    first = next(columns, None)
    if not isinstance(first, list):
        return
    for column in columns:
        if not isinstance(column, list):
            return
        if len(column) != len(first):
            raise BadRequest(E6D_LENGTHS)


def column_length(columns: dict[str, Any]) -> int:
    """The length of a records-orient object of columns, as `pd.DataFrame(dict)` sees it
    (§4.1): lists are columns and must share one length; other values (strings, numbers,
    null) are broadcast to it; an object of scalars only has no length, so pandas refused
    it. Columns given as objects (pandas would align them on their keys) are refused too: a
    documented deviation, rather than a guess at pandas' index union.

    Raises:
        BadRequest: E3 `records`.
    """
    lengths = {len(value) for value in columns.values() if isinstance(value, list)}
    if any(isinstance(value, dict) for value in columns.values()) or len(lengths) > 1:
        raise BadRequest(_e3("records"))
    if not lengths:
        if columns:
            raise BadRequest(_e3("records"))
        return 0
    (length,) = lengths
    return length


def columns_to_rows(columns: dict[str, Any]) -> list[list[Any]]:
    """Rows of a records-orient object of columns, as `pd.DataFrame(dict)` builds them (§4.1).

    Raises:
        BadRequest: E3 `records` (`column_length`).
    """
    length = column_length(columns)
    cells = [value if isinstance(value, list) else [value] * length for value in columns.values()]
    return [list(row) for row in zip(*cells, strict=True)]


def render_predictions(predictions: Any, wrapper_attr: str | None = None) -> bytes:
    """A 1.30.1 success body: `json.dump` with stdlib defaults, optionally wrapped (§5.1).

    1.30.1 tested the wrapper variable for truth, so an empty name means no wrapper.
    """
    if wrapper_attr:
        return jsoncodec.dumps_legacy({wrapper_attr: predictions})
    return jsoncodec.dumps_legacy(predictions)
