"""The corpus README's comparison rules: JSON values and whole replies."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pytest

from sim.corpus import Response
from sim.equality import assert_legacy_equivalent, json_equal, media_type, reply_mismatch

JSON = "application/json"
HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
ERROR_400 = '{"error_code": "BAD_REQUEST", "message": "a", "stack_trace": "t"}'


@dataclass(frozen=True)
class Wire:
    """A reply as the table writes it: status, Content-Type, body text."""

    status: int
    content_type: str
    body: str


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        pytest.param([0, 1, 2], [0, 1, 2], True, id="same"),
        pytest.param(206.11667724510477, 206.1166772451056, True, id="last-digits"),
        pytest.param(1.0, 1.0 + 1e-6, False, id="beyond-1e-9"),
        pytest.param(math.nan, math.nan, True, id="nan-is-nan"),
        pytest.param(math.nan, 1.0, False, id="nan-is-not-a-number"),
        pytest.param(math.inf, math.inf, True, id="inf"),
        pytest.param(0, 0.0, True, id="int-float"),
        pytest.param(True, 1, False, id="bool-is-not-int"),
        pytest.param({"a": 1, "b": 2}, {"b": 2, "a": 1}, True, id="key-order"),
        pytest.param({"a": 1}, {"a": 1, "b": 2}, False, id="extra-key"),
        pytest.param([1, 2], [1, 2, 3], False, id="length"),
        pytest.param("x", ["x"], False, id="scalar-vs-list"),
        pytest.param(None, None, True, id="null"),
    ],
)
def test_json_equal(a: object, b: object, equal: bool) -> None:
    assert json_equal(a, b) is equal
    assert json_equal(b, a) is equal


@pytest.mark.parametrize(
    ("expected", "got", "equal"),
    [
        pytest.param(Wire(200, JSON, "[0, 1]"), Wire(200, JSON, "[0,1]"), True, id="json"),
        pytest.param(Wire(200, JSON, "[NaN]"), Wire(200, JSON, "[NaN]"), True, id="bare-nan"),
        pytest.param(Wire(200, JSON, "[0, 1]"), Wire(200, JSON, "[1, 0]"), False, id="body"),
        pytest.param(Wire(200, JSON, "[0]"), Wire(400, JSON, "[0]"), False, id="status"),
        pytest.param(Wire(200, JSON, "[0]"), Wire(200, JSON, "<html>"), False, id="not-json"),
        pytest.param(
            Wire(400, JSON, ERROR_400),
            Wire(400, JSON, '{"error_code": "BAD_REQUEST", "message": "other words"}'),
            True,
            id="error-code-not-message",
        ),
        pytest.param(
            Wire(400, JSON, ERROR_400),
            Wire(400, JSON, '{"error_code": "INVALID_PARAMETER_VALUE", "message": "a"}'),
            False,
            id="error-code-differs",
        ),
        pytest.param(
            Wire(400, JSON, ERROR_400), Wire(400, JSON, "[]"), False, id="error-not-object"
        ),
        pytest.param(
            Wire(415, TEXT, "one text"), Wire(415, "text/plain", "other"), True, id="text"
        ),
        pytest.param(Wire(404, HTML, "<!doctype html>"), Wire(404, JSON, "{}"), False, id="media"),
        pytest.param(Wire(200, JSON, "1.30.1"), Wire(200, JSON, "1.30.1"), True, id="bad-json-200"),
    ],
)
def test_reply_mismatch_follows_the_corpus_rules(expected: Wire, got: Wire, equal: bool) -> None:
    recorded = Response(expected.status, {"content-type": expected.content_type}, expected.body)
    why = reply_mismatch(recorded, got.status, got.content_type, got.body.encode())
    assert (why is None) is equal
    if equal:
        assert_legacy_equivalent(got.status, got.content_type, got.body.encode(), recorded)
    else:
        with pytest.raises(AssertionError, match=re.escape(str(why))):
            assert_legacy_equivalent(got.status, got.content_type, got.body.encode(), recorded)


@pytest.mark.parametrize(
    ("a", "b", "rel", "equal"),
    [
        pytest.param(1.0, 1.0 + 1e-12, 0.0, False, id="rel-zero-is-exact"),
        pytest.param(1.0, 1.0 + 1e-6, 1e-3, True, id="rel-wider"),
        pytest.param(math.inf, 1.0, 1e-9, False, id="inf-is-not-finite"),
        pytest.param(math.inf, -math.inf, 1e-9, False, id="inf-signs"),
    ],
)
def test_json_equal_tolerance(a: float, b: float, rel: float, equal: bool) -> None:
    assert json_equal(a, b, rel) is equal
    assert json_equal(b, a, rel) is equal


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/plain; charset=utf-8", "text/plain"),
        ("Application/JSON", "application/json"),
        (None, None),
    ],
)
def test_media_type(content_type: str | None, expected: str | None) -> None:
    assert media_type(content_type) == expected


def test_an_error_code_on_a_success_is_compared_as_a_body() -> None:
    recorded = Response(200, {"content-type": JSON}, '{"error_code": "X"}')
    assert reply_mismatch(recorded, 200, JSON, b'{"error_code": "Y"}') == "body differs"
