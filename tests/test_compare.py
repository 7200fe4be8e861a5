"""Tables of (primary, shadow, tolerance) → verdict."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.compare import (
    Answer,
    Comparison,
    Tolerance,
    Verdict,
    compare,
    compare_values,
    compile_ignore,
    render_path,
    shadow_error,
)
from proxy.config.cutover import CompareConfig

TIGHT = Tolerance(abs_tol=0.0, rel_tol=0.0)
LOOSE = Tolerance(abs_tol=1e-3, rel_tol=1e-3)


def tol(**kwargs: Any) -> Tolerance:
    return Tolerance.from_config(CompareConfig(**kwargs))


@pytest.mark.parametrize(
    ("primary", "shadow", "tolerance", "expected"),
    [
        pytest.param([0, 1, 2], [0, 1, 2], TIGHT, Comparison(Verdict.MATCH), id="equal"),
        pytest.param([1], [1.0], TIGHT, Comparison(Verdict.MATCH), id="int-vs-float"),
        pytest.param([0.1], [0.1000001], LOOSE, Comparison(Verdict.MATCH), id="within-relative"),
        pytest.param([0.1], [0.2], LOOSE, Comparison(Verdict.VALUE, "$[0]", 0.1, 0.2), id="beyond"),
        pytest.param([0.0], [1e-4], LOOSE, Comparison(Verdict.MATCH), id="within-absolute"),
        pytest.param(
            [0.0], [1e-4], TIGHT, Comparison(Verdict.VALUE, "$[0]", 0.0, 1e-4), id="tight"
        ),
        pytest.param(
            [float("nan")], [float("nan")], TIGHT, Comparison(Verdict.MATCH), id="nan-nan"
        ),
        pytest.param(
            [float("nan")], [0.0], LOOSE, Comparison(Verdict.VALUE, "$[0]", "nan", 0.0), id="nan-0"
        ),
        pytest.param(
            [float("inf")], [float("inf")], TIGHT, Comparison(Verdict.MATCH), id="inf-inf"
        ),
        pytest.param(
            [True], [1], LOOSE, Comparison(Verdict.VALUE, "$[0]", True, 1), id="bool-is-not-1"
        ),
        pytest.param(
            [None], [0], LOOSE, Comparison(Verdict.VALUE, "$[0]", None, 0), id="null-vs-0"
        ),
        pytest.param(
            ["a"], ["b"], LOOSE, Comparison(Verdict.VALUE, "$[0]", "a", "b"), id="strings"
        ),
        pytest.param(
            [1, 2],
            [1, 2, 3],
            LOOSE,
            Comparison(Verdict.SHAPE, "$", "list[2]", "list[3]", "list lengths differ"),
            id="length",
        ),
        pytest.param(
            [[1, 2]],
            [{"a": 1}],
            LOOSE,
            Comparison(Verdict.SHAPE, "$[0]", "list[2]", "object{1}"),
            id="list-vs-object",
        ),
        pytest.param(
            [1],
            [[1]],
            LOOSE,
            Comparison(Verdict.SHAPE, "$[0]", "int", "list[1]"),
            id="scalar-vs-list",
        ),
        pytest.param(
            {"a": 1, "b": 2},
            {"a": 1},
            LOOSE,
            Comparison(Verdict.SHAPE, "$.b", "int", "absent", "keys differ"),
            id="missing-key",
        ),
        pytest.param(
            {"a": [{"x": 1, "y": 2}]},
            {"a": [{"x": 1, "y": 3}]},
            LOOSE,
            Comparison(Verdict.VALUE, "$.a[0].y", 2, 3),
            id="nested-path",
        ),
        pytest.param(
            {"odd key": 1},
            {"odd key": 2},
            LOOSE,
            Comparison(Verdict.VALUE, '$["odd key"]', 1, 2),
            id="quoted-key",
        ),
        pytest.param(
            [1, 5],
            [2, 6],
            LOOSE,
            Comparison(Verdict.VALUE, "$[0]", 1, 2),
            id="first-difference-wins",
        ),
    ],
)
def test_values(primary: Any, shadow: Any, tolerance: Tolerance, expected: Comparison) -> None:
    assert compare_values(primary, shadow, tolerance) == expected


@pytest.mark.parametrize(
    ("primary", "shadow", "ignore", "verdict"),
    [
        pytest.param({"p": 1, "t": 5}, {"p": 1, "t": 9}, ["$.t"], Verdict.MATCH, id="path-ignored"),
        pytest.param(
            {"p": 1, "t": 5}, {"p": 1}, ["$.t"], Verdict.MATCH, id="ignored-key-may-be-absent"
        ),
        pytest.param(
            [{"p": 1, "id": "a"}, {"p": 2, "id": "b"}],
            [{"p": 1, "id": "x"}, {"p": 2, "id": "y"}],
            ["$[*].id"],
            Verdict.MATCH,
            id="wildcard-index",
        ),
        pytest.param(
            {"a": {"model_version": 1}, "b": [{"model_version": 2}]},
            {"a": {"model_version": 3}, "b": [{"model_version": 4}]},
            ["model_version"],
            Verdict.MATCH,
            id="bare-name-anywhere",
        ),
        pytest.param(
            {"a": {"x": 1}, "b": {"x": 1}},
            {"a": {"x": 2}, "b": {"x": 2}},
            ["$.*.x"],
            Verdict.MATCH,
            id="wildcard-key",
        ),
        pytest.param(
            {"t": 5, "p": 1}, {"t": 9, "p": 2}, ["$.t"], Verdict.VALUE, id="others-still-compared"
        ),
    ],
)
def test_ignored_fields(primary: Any, shadow: Any, ignore: list[str], verdict: Verdict) -> None:
    assert compare_values(primary, shadow, tol(ignore=tuple(ignore))).verdict is verdict


@pytest.mark.parametrize(
    ("ignore_order", "verdict"),
    [(True, Verdict.MATCH), (False, Verdict.SHAPE)],
)
def test_record_order(ignore_order: bool, verdict: Verdict) -> None:
    primary = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}, None, 3]
    shadow = [3, {"a": 2, "b": "y"}, None, {"a": 1, "b": "x"}]
    result = compare_values(primary, shadow, tol(ignore_order=ignore_order))
    assert result.verdict is verdict


def test_record_order_applies_to_the_records_only() -> None:
    # A row's own vector (class probabilities) keeps its order: swapping is a difference.
    result = compare_values([[0.1, 0.9]], [[0.9, 0.1]], tol(ignore_order=True))
    assert (result.verdict, result.path) == (Verdict.VALUE, "$[0][0]")


@pytest.mark.parametrize(
    ("primary", "shadow", "verdict"),
    [
        pytest.param(Answer(200, b"[1, 2]"), Answer(200, b"[1,2]"), Verdict.MATCH, id="spacing"),
        pytest.param(Answer(200, b"[1]"), Answer(500, b"{}"), Verdict.STATUS, id="status"),
        pytest.param(
            Answer(400, b'{"error_code": "BAD_REQUEST", "message": "one"}'),
            Answer(400, b'{"error_code": "BAD_REQUEST", "message": "two"}'),
            Verdict.MATCH,
            id="same-error-status",
        ),
        pytest.param(Answer(200, b"[NaN]"), Answer(200, b"[NaN]"), Verdict.MATCH, id="bare-nan"),
        pytest.param(Answer(200, b"a,b"), Answer(200, b"a,b"), Verdict.MATCH, id="same-non-json"),
        pytest.param(Answer(200, b"a,b"), Answer(200, b"a,c"), Verdict.VALUE, id="non-json"),
        pytest.param(Answer(200, b"[1]"), Answer(200, b"[1"), Verdict.VALUE, id="one-malformed"),
    ],
)
def test_answers(primary: Answer, shadow: Answer, verdict: Verdict) -> None:
    assert compare(primary, shadow, LOOSE).verdict is verdict


def test_status_mismatch_reports_both_statuses() -> None:
    result = compare(Answer(200, b"[1]"), Answer(503, b"{}"), LOOSE)
    assert (result.primary, result.shadow) == (200, 503)


def test_non_json_difference_keeps_no_payload() -> None:
    result = compare(Answer(200, b"secret,a"), Answer(200, b"secret,b"), LOOSE)
    assert (result.primary, result.shadow) == (None, None)


def test_long_strings_are_cut() -> None:
    result = compare_values(["x" * 1000], ["y" * 1000], LOOSE)
    assert len(result.primary) < 250


def test_shadow_error() -> None:
    assert shadow_error("UT").verdict is Verdict.SHADOW_ERROR


@pytest.mark.parametrize(
    ("path", "text"),
    [((), "$"), ((0, "a"), "$[0].a"), (("a b",), '$["a b"]')],
)
def test_render_path(path: tuple[str | int, ...], text: str) -> None:
    assert render_path(path) == text


@pytest.mark.parametrize("spec", ["$.", "$[x]", "$a"])
def test_bad_ignore_path(spec: str) -> None:
    with pytest.raises(ValueError, match="not a path"):
        compile_ignore([spec])


def test_huge_integers() -> None:
    assert compare_values([10**400], [10**400], LOOSE).matched
    assert not compare_values([10**400], [10**400 + 1], TIGHT).matched
