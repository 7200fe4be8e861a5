"""The toy model: what a simulator predicts for each row."""

from __future__ import annotations

import math
from typing import Any

import pytest

from sim.scoring import predict


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param([[1, 2.5], [3, 4]], [3.5, 7.0], id="list-rows"),
        pytest.param([{"a": 1, "b": 2}], [3.0], id="record-rows"),
        pytest.param([[1, "x", True, 2]], [3.0], id="strings-and-bools-ignored"),
        pytest.param([[[1, 2], [3, [4]]]], [10.0], id="tensor-flattened"),
        pytest.param([{"a": [1, 2], "b": {"c": 3}}], [6.0], id="nested-objects"),
        pytest.param([[], ["only text"]], [0.0, 0.0], id="no-numbers"),
        pytest.param([5, 2.5], [5.0, 2.5], id="scalar-instances"),
        pytest.param([], [], id="no-rows"),
    ],
)
def test_predict_sums_each_row(rows: list[Any], expected: list[float]) -> None:
    result = predict(rows)
    assert result == expected
    assert all(type(value) is float for value in result)


@pytest.mark.parametrize(
    "row",
    [
        pytest.param([1, None], id="null"),
        pytest.param([1, math.nan], id="nan"),
        pytest.param([math.inf, -math.inf], id="inf-minus-inf"),
    ],
)
def test_predict_propagates_nan(row: list[Any]) -> None:
    assert math.isnan(predict([row])[0])
