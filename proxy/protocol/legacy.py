"""MLflow 1.30.1's side of the protocol: read a request as its scoring server did, render replies.

Pure functions. No I/O, no logging. Every rule cites `shared/docs/protocols.md`; a request
that 1.30.1 refused for a reason visible in the request is refused here with 1.30.1's reply
(§4), so the new side never sees it.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Iterator
from enum import Enum
from typing import Any, Final

from proxy import jsoncodec
from proxy.errors import (
    E1_MALFORMED_JSON,
    E2_NOT_LIST_OR_DICT,
    E3_PANDAS,
    E4_CSV,
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
    content_type: str | None, body: bytes, *, accept_v2_bodies: bool = False
) -> LegacyRequest:
    """Validate a legacy request with the rules of 1.30.1 (§2.1–§2.5, §4.1).

    The order is 1.30.1's: Content-Type, charset (E9) before format, media type and format
    (E10), UTF-8 decoding of the body (E11), then the chosen parser. JSON is parsed once,
    NaN-tolerant; CSV is not parsed at all (§4.1: nothing to check before forwarding).

    Args:
        content_type: the header as received, or None when the request had none.
        body: the body as received.
        accept_v2_bodies: forward a well-formed new-protocol envelope sent under plain
            `application/json` instead of refusing it as 1.30.1 did (§4.1, §8.8).

    Raises:
        MissingContentType: no Content-Type, or a body that is not UTF-8 (E11).
        UnsupportedMediaType: a charset other than UTF-8 (E9), or a media type / format
            1.30.1 did not serve (E10).
        BadRequest: E1–E6 with 1.30.1's text.
    """
    ctype = parse_content_type(content_type)
    if ctype.charset != "utf-8":
        raise UnsupportedMediaType.charset()
    reader = _reader(ctype)
    if reader is _Reader.CSV:
        _require_utf8(body)
        return LegacyRequest(LegacyFormat.CSV, None, body, ctype)
    if reader is _Reader.JSON:
        payload = _load(body, E1_MALFORMED_JSON, deep_crashes=True)
        return LegacyRequest(_infer(payload, accept_v2_bodies), payload, body, ctype)
    if reader is _Reader.SPLIT:
        payload = _load(body, _e3("split"))
        if not isinstance(payload, dict) or not payload.keys() <= SPLIT_KEYS:
            raise BadRequest(_e3("split"))
        return LegacyRequest(LegacyFormat.PANDAS_SPLIT, payload, body, ctype)
    if reader is _Reader.RECORDS:
        payload = _load(body, _e3("records"))
        if isinstance(payload, dict):
            columns_to_rows(payload)
        elif not isinstance(payload, list):
            raise BadRequest(_e3("records"))
        return LegacyRequest(LegacyFormat.PANDAS_RECORDS, payload, body, ctype)
    payload = _load(body, E5_NUMPY)
    if not isinstance(payload, dict) or not all(key in payload for key in NUMPY_SPLIT_KEYS):
        raise BadRequest(E5_NUMPY)
    return LegacyRequest(LegacyFormat.NUMPY_SPLIT, payload, body, ctype)


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


def _require_utf8(body: bytes) -> None:
    # 1.30.1 decoded the body before parsing and did not catch the error: Flask's 500 page.
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise MissingContentType("request body is not UTF-8") from None


def _load(body: bytes, invalid: str, *, deep_crashes: bool = False) -> Any:
    """Parse JSON once, or raise the reply 1.30.1 gave for this parser (`invalid`: E1/E3/E5).

    Under plain JSON 1.30.1 caught only `JSONDecodeError`, so a body nested too deeply for
    the stdlib parser crashed into the 500 page (`deep_crashes`); the pandas and numpy
    readers caught every exception.
    """
    try:
        return jsoncodec.loads(body)
    except UnicodeDecodeError:
        raise MissingContentType("request body is not UTF-8") from None
    except ValueError:
        raise BadRequest(invalid) from None
    except RecursionError:
        if deep_crashes:
            raise MissingContentType("request body nested too deeply") from None
        raise BadRequest(invalid) from None


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


def columns_to_rows(columns: dict[str, Any]) -> list[list[Any]]:
    """Rows of a records-orient object of columns, as `pd.DataFrame(dict)` builds them (§4.1).

    Lists are columns and must share one length; other values (strings, numbers, null) are
    broadcast to it; an object of scalars only has no length, so pandas refused it.
    Columns given as objects (pandas would align them on their keys) are refused too: a
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
        return []
    (length,) = lengths
    cells = [value if isinstance(value, list) else [value] * length for value in columns.values()]
    return [list(row) for row in zip(*cells, strict=True)]


# pandas 1.5.3's default NA strings for read_csv (1.30.1's environment; "None" came in 2.0).
CSV_NA_VALUES: Final = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "n/a",
        "nan",
        "null",
    }
)
CSV_TRUE_VALUES: Final = frozenset({"True", "TRUE", "true"})
CSV_FALSE_VALUES: Final = frozenset({"False", "FALSE", "false"})
_CSV_INT = re.compile(r"[ \t]*[+-]?\d+[ \t]*")
_CSV_FLOAT = re.compile(
    r"[ \t]*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity)[ \t]*", re.IGNORECASE
)


def read_csv(text: str) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of a CSV body, read with `pd.read_csv` defaults (§2.4, §4.1 `split`).

    Header row, comma, double-quote quoting, blank lines skipped, duplicate names mangled
    (`a`, `a.1`), an empty name `Unnamed: <i>`, short rows padded with NA. Each column gets
    one type, as pandas infers it: int, float (NA → NaN), bool, or string (NA → NaN).

    Raises:
        BadRequest: E4, for an empty body or a row longer than the header.
    """
    rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    if not rows:
        raise BadRequest(E4_CSV)
    header, body = rows[0], rows[1:]
    width = len(header)
    if any(len(row) > width for row in body):
        raise BadRequest(E4_CSV)
    columns = [[row[index] if index < len(row) else "" for row in body] for index in range(width)]
    typed = [_typed_column(column) for column in columns]
    data = [list(row) for row in zip(*typed, strict=True)] if body else []
    return _column_names(header), data


def _column_names(header: list[str]) -> list[str]:
    names: list[str] = []
    seen: dict[str, int] = {}
    for index, name in enumerate(header):
        name = name or f"Unnamed: {index}"
        if name in seen:
            seen[name] += 1
            name = f"{name}.{seen[name]}"
        seen.setdefault(name, 0)
        names.append(name)
    return names


def _typed_column(cells: list[str]) -> list[Any]:
    values = [cell for cell in cells if cell not in CSV_NA_VALUES]
    has_na = len(values) < len(cells)
    nan = float("nan")
    if values and not has_na and all(_CSV_INT.fullmatch(cell) for cell in values):
        return [int(cell) for cell in cells]
    if values and all(_CSV_FLOAT.fullmatch(cell) for cell in values):
        return [nan if cell in CSV_NA_VALUES else float(cell) for cell in cells]
    if values and all(cell in CSV_TRUE_VALUES or cell in CSV_FALSE_VALUES for cell in values):
        return [nan if cell in CSV_NA_VALUES else cell in CSV_TRUE_VALUES for cell in cells]
    return [nan if cell in CSV_NA_VALUES else cell for cell in cells]


def render_predictions(predictions: Any, wrapper_attr: str | None = None) -> bytes:
    """A 1.30.1 success body: `json.dump` with stdlib defaults, optionally wrapped (§5.1).

    1.30.1 tested the wrapper variable for truth, so an empty name means no wrapper.
    """
    if wrapper_attr:
        return jsoncodec.dumps_legacy({wrapper_attr: predictions})
    return jsoncodec.dumps_legacy(predictions)
