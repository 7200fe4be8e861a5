"""How much work one request may ask for: the shape of its frame and the depth of its JSON.

Pure functions over a frozen `WorkLimits`. 1.30.1 had no such limits (pandas built whatever
frame a body described, and a deep body crashed its parser); the proxy's are configurable
(`limits.max_columns`, `max_cells`, `max_depth`) and refuse with `LimitExceeded`, a 1.x
400 (§6.5), before any translation work, so one body cannot cost the proxy (or the model
behind it) more than the limits allow.

A frame's cells are counted as pandas would lay them out (§2.4, §2.5): rows times the
widest row, so rows that are short, or records that lack keys, count as the cells pandas
fills in for them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from proxy.config.backends import (
    DEFAULT_MAX_CELLS,
    DEFAULT_MAX_COLUMNS,
    DEFAULT_MAX_DEPTH,
    DEPTH_CEILING,
)
from proxy.errors import LimitExceeded

_CONTAINERS: Final = frozenset({list, dict})


@dataclass(frozen=True, slots=True)
class WorkLimits:
    """The `limits:` keys that bound translation work (README "Limits and hardening")."""

    max_columns: int = DEFAULT_MAX_COLUMNS
    max_cells: int = DEFAULT_MAX_CELLS
    max_depth: int = DEFAULT_MAX_DEPTH

    @property
    def depth(self) -> int:
        """The depth actually enforced: `max_depth`, at most `DEPTH_CEILING`."""
        return min(self.max_depth, DEPTH_CEILING)

    def check_frame(self, columns: int, rows: int) -> None:
        """Refuse a frame wider than `max_columns` or larger than `max_cells`.

        Raises:
            LimitExceeded: `max_columns` first, then `max_cells`.
        """
        if columns > self.max_columns:
            raise LimitExceeded("max_columns", f"{columns} columns", self.max_columns)
        if columns * rows > self.max_cells:
            raise LimitExceeded(
                "max_cells", f"{columns * rows} cells ({rows} rows of {columns})", self.max_cells
            )

    def bounds_frame_of(self, size: int) -> bool:
        """Whether no body of `size` bytes can describe a frame over the limits, so its
        frame need not be measured: every value, row and column name takes a byte at
        least, so such a body has at most `size` columns and `size` × `size` cells."""
        return size <= self.max_columns and size * size <= self.max_cells

    def too_deep(self) -> LimitExceeded:
        """The refusal of a body nested deeper than `depth`."""
        return LimitExceeded("max_depth", f"more than {self.depth} levels of nesting", self.depth)


def check_json_depth(text: bytes, value: Any, limits: WorkLimits) -> None:
    """`check_depth` of the value decoded from `text`, told how many brackets `text` holds
    (counted in C): a container is written with a bracket of its own, so the walk stops
    as soon as too few are left to nest past the limit (those inside strings only make
    the count larger). A flat frame is then judged from its rows, never its cells.

    Raises:
        LimitExceeded: `max_depth`.
    """
    brackets = text.count(b"[") + text.count(b"{")
    if brackets > limits.depth:
        check_depth(value, limits, brackets)


def check_depth(value: Any, limits: WorkLimits, brackets: int | None = None) -> None:
    """Refuse a decoded JSON value nested deeper than `limits.depth` (`[]` is one level).

    Level by level, without recursion, so no depth can exhaust the stack. `brackets`, when
    given, bounds the containers the value holds (see `check_json_depth`).

    Raises:
        LimitExceeded: `max_depth`.
    """
    if type(value) not in _CONTAINERS:
        return
    level = [value]
    depth = seen = 1
    while True:
        if depth > limits.depth:
            raise limits.too_deep()
        items = _items(level)
        below = sum(map(_CONTAINERS.__contains__, map(type, items)))  # counted in C
        if not below:
            return
        seen += below
        if brackets is not None and brackets - seen <= limits.depth - depth - 1:
            return  # too few brackets left for anything below to nest past the limit
        level = [item for item in items if type(item) in _CONTAINERS]
        depth += 1


def _items(level: list[Any]) -> list[Any]:
    """Every item of every container of `level`. A level of lists only (rows) or of
    objects only (records) is flattened in C, with no Python step per container."""
    kinds = set(map(type, level))
    if kinds == {list}:
        return list(itertools.chain.from_iterable(level))
    if kinds == {dict}:
        return list(itertools.chain.from_iterable(map(dict.values, level)))
    return [item for c in level for item in (c.values() if type(c) is dict else c)]


def check_rows(rows: list[Any], limits: WorkLimits, columns: int = 0) -> None:
    """A frame given as rows (split `data`, records, tensor instances): its width is the
    widest row, or the union of the keys of its objects, and at least `columns`.

    Raises:
        LimitExceeded: `max_columns` or `max_cells`.
    """
    limits.check_frame(max(columns, _width(rows)), len(rows))


def check_columns(columns: dict[str, Any], limits: WorkLimits) -> None:
    """A frame given as columns (records of columns, tensor `inputs` by name): a scalar
    column is broadcast to the longest list (§4.1 L-REC), so it counts as that many cells.

    Raises:
        LimitExceeded: `max_columns` or `max_cells`.
    """
    limits.check_frame(len(columns), _longest(columns.values()))


def _width(rows: list[Any]) -> int:
    kinds = set(map(type, rows))
    if kinds == {list}:
        return max(map(len, rows))
    if kinds == {dict}:
        return len(set().union(*rows))
    # Mixed or scalar rows: pandas refuses or reads one column; count generously.
    keys: set[Any] = set()
    width = 1 if rows else 0
    for row in rows:
        if isinstance(row, dict):
            keys.update(row)
        elif isinstance(row, list):
            width = max(width, len(row))
    return max(width, len(keys))


def _longest(values: Iterable[Any]) -> int:
    return max((len(value) for value in values if isinstance(value, list)), default=1)
