"""Is the shadow's answer the same as the primary's? Pure: no I/O, no logging.

Both answers arrive in one form (the legacy client's: the serverless reply has been through
`translate.v2_to_legacy`), and are compared as parsed JSON with a numeric tolerance,
ignored fields and, optionally, any order of the top-level records.

The verdict says what kind of difference came first, in document order:

- `status_mismatch`: the two HTTP statuses differ (bodies are not compared then; two
  error replies with the same status match, because 1.x and 2.x word errors differently);
- `shape_mismatch`: a container where a scalar was, another container type, another
  list length or another set of keys;
- `value_mismatch`: two scalars differ beyond the tolerance (or in type);
- `shadow_error`: the shadow call itself failed (made by the caller, not here).

A mismatch names the path of the first differing field (`$[3].label`) and the two values
there; a shape mismatch gives short descriptions (`list[3]`), never a subtree, so no
payload is kept unless the caller keeps one on purpose.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from proxy import jsoncodec
from proxy.config.cutover import CompareConfig

Path = tuple[str | int, ...]
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOKEN = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*|\*)|\[(\d+|\*)\]|\[\"([^\"]*)\"\]")
_WILD = object()
# A scalar kept in a mismatch report is cut to this many characters.
MAX_VALUE_CHARS = 200


class Verdict(StrEnum):
    MATCH = "match"
    SHAPE = "shape_mismatch"
    VALUE = "value_mismatch"
    STATUS = "status_mismatch"
    SHADOW_ERROR = "shadow_error"


@dataclass(frozen=True, slots=True)
class Answer:
    """One side's reply in the legacy client's form."""

    status: int
    body: bytes

    def __reduce__(self) -> tuple[Any, ...]:
        # Comparisons and answers come back from the shadow worker: see `shadow.job`.
        return (Answer, (self.status, self.body))


@dataclass(frozen=True, slots=True)
class Comparison:
    verdict: Verdict
    path: str | None = None
    primary: Any = None
    shadow: Any = None
    detail: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (Comparison, (self.verdict, self.path, self.primary, self.shadow, self.detail))

    @property
    def matched(self) -> bool:
        return self.verdict is Verdict.MATCH


MATCH = Comparison(Verdict.MATCH)
# A shadow job never run, for want of a free slot: a result, but not a verdict.
DROPPED = "dropped"


def parity_class(result: str) -> str:
    """`match`, `mismatch`, `error` or `dropped` for a shadow result (a `Verdict` value or
    `DROPPED`): the classes the reports and the metrics count."""
    if result in (Verdict.MATCH, DROPPED):
        return result
    return "mismatch" if result.endswith("mismatch") else "error"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How close is the same. `ignore` holds compiled patterns (see `compile_ignore`)."""

    abs_tol: float = 1e-6
    rel_tol: float = 1e-6
    ignore: tuple[tuple[object, ...], ...] = field(default_factory=tuple)
    ignore_names: frozenset[str] = frozenset()
    ignore_order: bool = False

    @classmethod
    def from_config(cls, config: CompareConfig) -> Tolerance:
        patterns, names = compile_ignore(config.ignore)
        return cls(config.abs_tol, config.rel_tol, patterns, names, config.ignore_order)


def compile_ignore(
    specs: Sequence[str],
) -> tuple[tuple[tuple[object, ...], ...], frozenset[str]]:
    """Split ignore specs into path patterns (`$.a[*].b`) and bare key names (`b`).

    Raises:
        ValueError: a spec starting with `$` that is not a path.
    """
    patterns: list[tuple[object, ...]] = []
    names: set[str] = set()
    for spec in specs:
        if not spec.startswith("$"):
            names.add(spec)
            continue
        rest, tokens, pos = spec[1:], [], 0
        while pos < len(rest):
            match = _TOKEN.match(rest, pos)
            if match is None:
                raise ValueError(f"not a path: {spec!r} (use $.key, $[0], $[*], $.*)")
            key, index, quoted = match.groups()
            if key == "*" or index == "*":
                tokens.append(_WILD)
            elif index is not None:
                tokens.append(int(index))
            else:
                tokens.append(quoted if quoted is not None else key)
            pos = match.end()
        patterns.append(tuple(tokens))
    return tuple(patterns), frozenset(names)


def render_path(path: Path) -> str:
    out = ["$"]
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _IDENTIFIER.match(part):
            out.append(f".{part}")
        else:
            out.append(f'["{part}"]')
    return "".join(out)


def _ignored(path: Path, tolerance: Tolerance) -> bool:
    if path and isinstance(path[-1], str) and path[-1] in tolerance.ignore_names:
        return True
    for pattern in tolerance.ignore:
        if len(pattern) == len(path) and all(
            want is _WILD or want == got for want, got in zip(pattern, path, strict=True)
        ):
            return True
    return False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"list[{len(value)}]"
    if isinstance(value, dict):
        return f"object{{{len(value)}}}"
    return type(value).__name__


def _scalar(value: Any) -> Any:
    """A scalar as a report may keep it: long strings cut, NaN/Infinity as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        return value[:MAX_VALUE_CHARS] + "…"
    return value


def _numbers_equal(a: float, b: float, tolerance: Tolerance) -> bool:
    if isinstance(a, int) and isinstance(b, int) and a == b:
        return True
    a_nan, b_nan = a != a, b != b
    if a_nan or b_nan:
        return a_nan and b_nan
    try:
        return math.isclose(a, b, rel_tol=tolerance.rel_tol, abs_tol=tolerance.abs_tol)
    except OverflowError:  # an int beyond float range
        return a == b


def _sort_key(value: Any) -> Any:
    # Total order over parsed JSON: type rank first, so mixed lists still sort.
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, value)
    if _is_number(value):
        return (2, -math.inf if value != value else value)
    if isinstance(value, str):
        return (3, value)
    if isinstance(value, list):
        return (4, tuple(_sort_key(item) for item in value))
    return (5, tuple(sorted((k, _sort_key(v)) for k, v in value.items())))


def _walk(a: Any, b: Any, path: Path, tolerance: Tolerance) -> Comparison:
    if _ignored(path, tolerance):
        return MATCH
    a_list, b_list = isinstance(a, list), isinstance(b, list)
    a_dict, b_dict = isinstance(a, dict), isinstance(b, dict)
    if a_list or b_list or a_dict or b_dict:
        if (a_list, a_dict) != (b_list, b_dict):
            return Comparison(Verdict.SHAPE, render_path(path), _describe(a), _describe(b))
        if a_list:
            if len(a) != len(b):
                return Comparison(
                    Verdict.SHAPE,
                    render_path(path),
                    _describe(a),
                    _describe(b),
                    "list lengths differ",
                )
            if tolerance.ignore_order and not path:
                a, b = sorted(a, key=_sort_key), sorted(b, key=_sort_key)
            for index, (x, y) in enumerate(zip(a, b, strict=True)):
                result = _walk(x, y, (*path, index), tolerance)
                if not result.matched:
                    return result
            return MATCH
        keys_a = [k for k in a if not _ignored((*path, k), tolerance)]
        keys_b = {k for k in b if not _ignored((*path, k), tolerance)}
        if set(keys_a) != keys_b:
            missing = sorted(keys_b - set(keys_a)) + sorted(set(keys_a) - keys_b)
            return Comparison(
                Verdict.SHAPE,
                render_path((*path, missing[0])),
                "absent" if missing[0] not in a else _describe(a[missing[0]]),
                "absent" if missing[0] not in b else _describe(b[missing[0]]),
                "keys differ",
            )
        for key in keys_a:
            result = _walk(a[key], b[key], (*path, key), tolerance)
            if not result.matched:
                return result
        return MATCH
    if _is_number(a) and _is_number(b):
        if _numbers_equal(a, b, tolerance):
            return MATCH
    elif type(a) is type(b) and a == b:
        return MATCH
    return Comparison(Verdict.VALUE, render_path(path), _scalar(a), _scalar(b))


def compare_values(primary: Any, shadow: Any, tolerance: Tolerance) -> Comparison:
    """Compare two parsed JSON values; the first difference in document order wins."""
    return _walk(primary, shadow, (), tolerance)


def compare(primary: Answer, shadow: Answer, tolerance: Tolerance) -> Comparison:
    """Compare two replies already in one form."""
    if primary.status != shadow.status:
        return Comparison(Verdict.STATUS, None, primary.status, shadow.status)
    if not 200 <= primary.status < 300:
        return MATCH
    if primary.body == shadow.body:
        # Equal bytes are equal JSON under any tolerance, ignore list or order; and the
        # serverless answer is rendered as 1.30.1 writes (§5.3), so agreeing answers are
        # usually byte for byte the same: no need to parse and walk both.
        return MATCH
    try:
        a, b = jsoncodec.loads(primary.body), jsoncodec.loads(shadow.body)
    except (ValueError, UnicodeDecodeError):
        return Comparison(Verdict.VALUE, "$", None, None, "bodies differ and are not both JSON")
    return compare_values(a, b, tolerance)


def shadow_error(detail: str) -> Comparison:
    """The verdict for a shadow call that produced no answer (UF, UT, UPE)."""
    return Comparison(Verdict.SHADOW_ERROR, detail=detail)
