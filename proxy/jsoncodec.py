"""The one place JSON is read and written. Pure.

orjson is fast but refuses the bare `NaN`/`Infinity` tokens that every MLflow server reads
and writes (protocols.md §4.2, §5.1), and reads an integer beyond 64 bits as a float; the
stdlib does neither. So reading tries orjson and falls back to the stdlib (`loads`), a value
that will be written again is read by `loads_exact`, and the legacy-facing writer is the
stdlib's, whose default separators and float repr are what 1.30.1 wrote (§5.3).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

import orjson

JSONDecodeError = ValueError

# orjson's own bound on nesting; its parser cannot be asked for more.
ORJSON_MAX_DEPTH = 1024
_ORJSON_TOO_DEEP = "depth limit exceeded"


class JSONTooDeep(ValueError):
    """Nested deeper than a parser goes: orjson's `ORJSON_MAX_DEPTH`, or the recursion
    limit of the stdlib's parser, which spends one Python frame per level."""


def loads(data: bytes | str) -> Any:
    """Parse JSON as MLflow's `json.loads` does: key order kept, 1 vs 1.0 kept, NaN accepted.

    An integer beyond 64 bits comes back as a float: use `loads_exact` for a value that
    will be serialised again.

    Raises:
        JSONTooDeep: nested deeper than `ORJSON_MAX_DEPTH` (a `ValueError` too).
        ValueError: the text is not JSON (not even with the stdlib's extensions).
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if exc.msg == _ORJSON_TOO_DEEP:
            raise JSONTooDeep(str(exc)) from None
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        return _stdlib_loads(text)


def _stdlib_loads(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise JSONTooDeep("nested past the recursion limit") from None


# orjson 3.13 does not refuse an integer beyond 64 bits: it returns a float, so 10**20 would
# come back as 1e+20. A value that is re-serialised must keep it an int (§4.2 "integer vs float
# spelling", §5.3), and such an integer needs a run of at least 19 digits that does not follow
# a "." (fraction digits cannot make one). Mapping bytes through a table finds that run at C
# speed; a regex with a look-behind is as slow as the stdlib parser itself.
_DIGIT_RUNS = bytes(
    ord("0") if byte in b"0123456789" else ord(".") if byte == ord(".") else ord(" ")
    for byte in range(256)
)
_LONG_INTEGER = b"0" * 19


def loads_exact(data: bytes) -> Any:
    """`loads` for a value that will be re-serialised: integers beyond 64 bits stay ints.

    A body that may hold one (a run of 19 digits not after a ".") is read by the stdlib;
    false alarms (long digit runs inside strings or exponents) only cost speed.

    Raises:
        JSONTooDeep: nested deeper than a parser goes (a `ValueError` too).
        ValueError: the bytes are not JSON (or not UTF-8).
    """
    runs = data.translate(_DIGIT_RUNS)
    if runs.startswith(_LONG_INTEGER) or b" " + _LONG_INTEGER in runs:
        return _stdlib_loads(data.decode("utf-8"))
    return loads(data)


# What `json.dumps` with no arguments uses, made once: the call itself is a third of the
# cost of rendering a short list of predictions.
_LEGACY_ENCODER = json.JSONEncoder()


# Items of a long list written per call of the encoder: its call makes a string per token
# before joining them, so a long list at once would hold each item twice more as text.
_ITEMS_PER_CHUNK: Final = 2048


def dumps_legacy(obj: Any) -> bytes:
    """Serialise as MLflow's `json.dump` with defaults: `", "`/`": "`, ASCII, bare NaN (§5.1)."""
    if type(obj) is list and len(obj) > _ITEMS_PER_CHUNK:
        step = _ITEMS_PER_CHUNK
        return bytes(
            dumps_legacy_list(obj[start : start + step] for start in range(0, len(obj), step))
        )
    return _LEGACY_ENCODER.encode(obj).encode("ascii")


def dumps_legacy_list(chunks: Iterable[Any], prefix: bytes = b"", suffix: bytes = b"") -> bytearray:
    """`prefix + dumps_legacy(list) + suffix` for a list given in chunks (lists or tuples of
    items), the same bytes, written a chunk at a time."""
    # Grown in place, each chunk's text freed as soon as it is copied in, and returned as
    # is: a join (or a final `bytes()`) would hold the whole body twice at its peak.
    out = bytearray(prefix)
    out += b"["
    first = True
    for chunk in chunks:  # never empty: an empty one would leave a stray separator
        if not first:
            out += b", "
        first = False
        out += memoryview(_LEGACY_ENCODER.encode(chunk).encode("ascii"))[1:-1]
    out += b"]"
    out += suffix
    return out


def dumps(obj: Any) -> bytes:
    """Compact JSON for the proxy's own endpoints (admin, reports). NaN is not allowed."""
    return orjson.dumps(obj)


# The two helpers below recurse through `map`, one Python frame per level of nesting (a
# comprehension would add its own), so a value as deep as the proxy accepts never reaches
# the recursion limit.


def has_non_finite(obj: Any) -> bool:
    """Whether a parsed value holds NaN or ±Infinity anywhere (§4.2 `upstream_nan`)."""
    if isinstance(obj, float):
        return obj != obj or obj in (float("inf"), float("-inf"))
    if isinstance(obj, list):
        return any(map(has_non_finite, obj))
    if isinstance(obj, dict):
        return any(map(has_non_finite, obj.values()))
    return False


def nan_to_null(obj: Any) -> Any:
    """A copy with every NaN/±Infinity replaced by None (§4.2 `upstream_nan: null`)."""
    if isinstance(obj, float):
        return None if obj != obj or obj in (float("inf"), float("-inf")) else obj
    if isinstance(obj, list):
        return list(map(nan_to_null, obj))
    if isinstance(obj, dict):
        return dict(zip(obj.keys(), map(nan_to_null, obj.values()), strict=True))
    return obj
