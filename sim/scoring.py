"""The toy model and the request readers both imitated servers share. Pure.

A request body becomes model rows, the rows become predictions; a body the imitated server
would refuse raises `Rejected` with the answer it would give.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from typing import Any, Final

from proxy import jsoncodec
from sim.replies import bad_request

# Messages quoted from the servers the corpus recorded (protocols.md §6.1, §6.2).
E3_PANDAS: Final = (
    "Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid "
    "JSON-formatted Pandas DataFrame with the `{orient}` orient produced using the "
    "`pandas.DataFrame.to_json(..., orient='{orient}')` method."
)
E4_CSV: Final = (
    "Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid "
    "CSV-formatted Pandas DataFrame produced using the `pandas.DataFrame.to_csv()` method."
)
E6_LENGTHS: Final = (
    "Failed to parse data as TF serving input. The length of values for each input/column "
    "name are not the same"
)
_SPLIT_KEYS: Final = frozenset({"columns", "index", "data"})
_CSV_MISSING: Final = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"})


def _numbers(value: Any) -> Iterator[float]:
    # bool is an int to Python but not a number to the toy model; null is a missing number,
    # which pandas reads as NaN (§4.2), so it propagates.
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        try:
            yield float(value)
        except OverflowError:
            yield math.copysign(math.inf, value)
    elif isinstance(value, float):
        yield value
    elif value is None:
        yield math.nan
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)


def predict(rows: list[Any]) -> list[float]:
    """The toy model: per row (or tensor instance), the sum of its numbers, as a float.

    Strings and booleans are ignored, null and NaN propagate as NaN, nested lists and
    objects are flattened, so both protocols give the same answer for the same data.
    """
    return [sum(_numbers(row), 0.0) for row in rows]


def columns_to_rows(columns: dict[str, Any]) -> list[Any]:
    values = list(columns.values())
    if not all(isinstance(v, list) for v in values):
        return [columns]
    lengths = {len(v) for v in values}
    if len(lengths) > 1:
        raise bad_request(E6_LENGTHS)
    count = lengths.pop() if lengths else 0
    return [{name: column[i] for name, column in columns.items()} for i in range(count)]


def tensor_rows(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return columns_to_rows(value)
    return [value]


def split_rows(obj: Any, *, require_data: bool, error: str) -> list[Any]:
    if not isinstance(obj, dict) or not set(obj) <= _SPLIT_KEYS:
        raise bad_request(error)
    if "data" not in obj:
        if require_data:
            raise bad_request(error)
        return []  # 1.30.1 reads columns without data as a zero-row frame (§4.1)
    data = obj["data"]
    if not isinstance(data, list):
        raise bad_request(error)
    return data


def _csv_cell(cell: str) -> Any:
    if cell in _CSV_MISSING:
        return None
    try:
        return float(cell)
    except ValueError:
        return cell


def csv_rows(body: bytes) -> list[Any]:
    """Read CSV as `pd.read_csv` defaults do (§2.4): a header line, then one row per line."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(E4_CSV) from exc
    lines = [row for row in csv.reader(io.StringIO(text)) if row]
    if not lines:
        raise bad_request(f"{E4_CSV} Error: 'No columns to parse from file'")
    return [[_csv_cell(cell) for cell in row] for row in lines[1:]]


def parse_content_type(raw: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type as MLflow does: `;` parts, `key=value`, case kept (§2.1)."""
    parts = [part.strip() for part in raw.split(";")]
    params: dict[str, str] = {}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        params[key] = value
    return parts[0], params


def decode_json(body: bytes, error: str) -> Any:
    try:
        return jsoncodec.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(error) from exc
