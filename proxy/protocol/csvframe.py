"""CSV bodies read as 1.30.1's `pd.read_csv` did (§2.4, §4.1 `split`), a chunk at a time.

Pure. Columns are typed in a first pass and converted and encoded in a second, chunk by
chunk, so a 16 MB body never exists as Python objects all at once; lines are split with a
regular expression rather than `io.StringIO`, which would hold a second, wider copy.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from proxy.errors import E4_CSV, BadRequest

# The csv module refuses a field over 128 KiB by default. pandas' reader (1.30.1's) had no
# such limit, so a long text cell is a valid request; the body reaching this module is
# already bounded by `limits.max_body_bytes`, so no field can be larger than that anyway.
csv.field_size_limit(2**31 - 1)

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
_CSV_BOOL_VALUES: Final = CSV_TRUE_VALUES | CSV_FALSE_VALUES
_CSV_INT = re.compile(r"[ \t]*[+-]?\d+[ \t]*")
_CSV_FLOAT = re.compile(
    r"[ \t]*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity)[ \t]*", re.IGNORECASE
)


def read_csv(text: str) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of a CSV body, read with `pd.read_csv` defaults (§2.4, §4.1 `split`).

    `read_csv_frame`, its rows gathered.

    Raises:
        BadRequest: E4, for an empty body or a row longer than the header.
    """
    names, chunks = read_csv_frame(text)
    return names, [list(row) for chunk in chunks for row in chunk]


# Rows read, typed and handed on at a time: every step below runs in C over one chunk, so
# a thread translating a large body gives the event loop its turn between chunks, and
# only one chunk of cells exists as Python objects at once.
CSV_CHUNK_ROWS: Final = 2048

_Chunk = list[tuple[Any, ...]]


class _Kind(Enum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    TEXT = "text"


@dataclass(slots=True)
class _Column:
    """What one column's cells allow so far (pandas' inference, §2.4)."""

    ints: bool = True
    floats: bool = True
    bools: bool = True
    values: bool = False
    na: bool = False

    def see(self, cells: tuple[str, ...]) -> None:
        na = not CSV_NA_VALUES.isdisjoint(cells)
        values = list(itertools.filterfalse(CSV_NA_VALUES.__contains__, cells)) if na else cells
        self.na |= na
        self.values |= bool(values)
        # `map` over the pattern's method: the tests run in C, no Python frame per cell.
        self.ints = self.ints and all(map(_CSV_INT.fullmatch, values))
        self.floats = self.floats and all(map(_CSV_FLOAT.fullmatch, values))
        self.bools = self.bools and _CSV_BOOL_VALUES.issuperset(values)

    def kind(self) -> _Kind:
        if self.values and self.ints and not self.na:
            return _Kind.INT
        if self.values and self.floats:
            return _Kind.FLOAT
        if self.values and self.bools:
            return _Kind.BOOL
        return _Kind.TEXT


def read_csv_frame(text: str, *, nulls: bool = False) -> tuple[list[str], Iterator[_Chunk]]:
    """Column names and rows (in chunks of tuples) of a CSV body, read as `pd.read_csv`
    with its defaults reads it (§2.4).

    Header row, comma, double-quote quoting, blank lines skipped, duplicate names mangled
    (`a`, `a.1`), an empty name `Unnamed: <i>`, short rows padded with NA. Each column gets
    one type, as pandas infers it: int, float (NA → NaN), bool, or string (NA → NaN). The
    types are found in a first reading; the rows come from a second one, chunk by chunk,
    so the whole frame never exists as Python objects.

    Args:
        nulls: NA and non-finite floats become None instead of NaN (§4.2 `upstream_nan`).

    Raises:
        BadRequest: E4, for an empty body or a row longer than the header (both found
            before this returns).
    """
    rows = csv_rows(text)
    header = next(rows, None)
    if header is None:
        raise BadRequest(E4_CSV)
    width = len(header)
    columns = [_Column() for _ in range(width)]
    for chunk in _chunks(rows, width):
        for column, cells in zip(columns, chunk, strict=True):
            column.see(cells)
    kinds = [column.kind() for column in columns]
    missing = None if nulls else math.nan
    return _column_names(header), _typed_chunks(text, kinds, missing)


def csv_rows(text: str) -> Iterator[list[str]]:
    # A generator, not one C call over the body: between rows the event loop may run.
    return (row for row in csv.reader(_lines(text)) if row)


# A line and its ending as `io.StringIO(text, newline="")` splits them ("\r\n", "\r" or
# "\n", kept), without its copy of the whole text at four bytes a character.
_LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)|[^\r\n]+")


def _lines(text: str) -> Iterator[str]:
    return (match.group() for match in _LINE.finditer(text))


def _chunks(rows: Iterator[list[str]], width: int) -> Iterator[list[tuple[str, ...]]]:
    """The rows after the header, `CSV_CHUNK_ROWS` at a time, as columns padded to `width`."""
    while chunk := list(itertools.islice(rows, CSV_CHUNK_ROWS)):
        if max(map(len, chunk)) > width:
            raise BadRequest(E4_CSV)
        columns = list(itertools.zip_longest(*chunk, fillvalue=""))
        padding = ("",) * len(chunk)
        yield columns + [padding] * (width - len(columns))


def _typed_chunks(text: str, kinds: list[_Kind], missing: float | None) -> Iterator[_Chunk]:
    rows = csv_rows(text)
    next(rows)
    for chunk in _chunks(rows, len(kinds)):
        typed = [_typed(cells, kind, missing) for cells, kind in zip(chunk, kinds, strict=True)]
        yield list(zip(*typed, strict=True))


def _typed(cells: tuple[str, ...], kind: _Kind, missing: float | None) -> list[Any]:
    na = not CSV_NA_VALUES.isdisjoint(cells)
    if kind is _Kind.INT:
        return list(map(int, cells))
    if kind is _Kind.FLOAT:
        if not na:
            floats: list[float | None] = list(map(float, cells))
        else:
            floats = [missing if cell in CSV_NA_VALUES else float(cell) for cell in cells]
        if missing is None:
            # `inf`, `-Infinity` or an overflowing `1e999` are not JSON numbers either.
            return [
                None if value is None or not math.isfinite(value) else value for value in floats
            ]
        return floats
    if kind is _Kind.BOOL:
        return [missing if cell in CSV_NA_VALUES else cell in CSV_TRUE_VALUES for cell in cells]
    if not na:
        return list(cells)
    return [missing if cell in CSV_NA_VALUES else cell for cell in cells]


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
