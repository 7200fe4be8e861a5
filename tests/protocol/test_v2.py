"""The MLflow 2.x / 3.x side: envelopes (§3.2, §4.1), success bodies (§5.2, §5.3), errors (§6.2)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from proxy.errors import UpstreamProtocolError
from proxy.protocol import v2
from proxy.protocol.v2 import UpstreamError


@pytest.mark.parametrize(
    ("wrap", "key", "inner", "body"),
    [
        pytest.param(
            v2.wrap_split,
            "dataframe_split",
            b'{"data": [[1.50, 1e5]]}',
            b'{"dataframe_split": {"data": [[1.50, 1e5]]}}',
            id="split-spelling-kept",
        ),
        pytest.param(
            v2.wrap_split,
            "dataframe_split",
            b' {"data": [[NaN]]}\n',
            b'{"dataframe_split":  {"data": [[NaN]]}\n}',
            id="split-whitespace-and-nan",
        ),
        pytest.param(
            v2.wrap_records,
            "dataframe_records",
            b'[{"b": 1, "a": 2}]',
            b'{"dataframe_records": [{"b": 1, "a": 2}]}',
            id="records-key-order",
        ),
    ],
)
def test_wrap_keeps_the_client_bytes(wrap: Any, key: str, inner: bytes, body: bytes) -> None:
    assert wrap(inner) == body
    assert json.dumps(json.loads(body)) == json.dumps({key: json.loads(inner)})


def test_encode_is_stdlib_json_with_nan() -> None:
    assert v2.encode({"inputs": [math.nan, 1, 1.0, "\u00e9"]}) == (
        b'{"inputs": [NaN, 1, 1.0, "\\u00e9"]}'
    )


# §5.3 step 1 / 2 / 4.
@pytest.mark.parametrize(
    ("body", "predictions"),
    [
        pytest.param(b'{"predictions": [0, 1, 2]}', [0, 1, 2], id="list"),
        pytest.param(b'{"predictions": {"b": 1, "a": 2.0}}', {"b": 1, "a": 2.0}, id="object"),
        pytest.param(b'{"predictions": null}', None, id="null"),
        pytest.param(b'{"predictions": [], "model_version": "3"}', [], id="extra-keys-ignored"),
        pytest.param(
            b'{"predictions": 123456789012345678901234567890}',
            123456789012345678901234567890,
            id="big-int-stays-int",
        ),
        pytest.param(
            b'{"predictions": [-12345678901234567890]}',
            [-12345678901234567890],
            id="big-negative-int",
        ),
        pytest.param(
            b'{"predictions": [0.12345678901234567890]}', [0.12345678901234568], id="long-fraction"
        ),
    ],
)
def test_read_predictions(body: bytes, predictions: Any) -> None:
    got = v2.read_predictions(body)
    assert got == predictions
    assert json.dumps(got) == json.dumps(predictions)


def test_read_predictions_keeps_nan() -> None:
    (value,) = v2.read_predictions(b'{"predictions": [NaN]}')
    assert math.isnan(value)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"2.22.5", id="not-json"),
        pytest.param(b"[0, 1, 2]", id="bare-list"),
        pytest.param(b'{"outputs": [0]}', id="no-predictions"),
        pytest.param(b'"predictions"', id="string"),
        pytest.param(b"\xff", id="not-utf8"),
        pytest.param(b"[" * 5000 + b"]" * 5000, id="too-deep"),
    ],
)
def test_read_predictions_refuses(body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError):
        v2.read_predictions(body)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(
            b'{"error_code": "BAD_REQUEST", "message": "m"}',
            UpstreamError("BAD_REQUEST", "m", None, bare=True),
            id="2.0.1",
        ),
        pytest.param(
            b'{"error_code": "X", "message": "m", "stack_trace": "t"}',
            UpstreamError("X", "m", "t", bare=False),
            id="stack-trace",
        ),
        pytest.param(
            b'{"error_code": "X", "message": "m", "sqlstate": "KAM00", "error_class": "E"}',
            UpstreamError("X", "m", None, bare=False),
            id="3.x",
        ),
        pytest.param(b'{"message": "m"}', UpstreamError(None, "m", None, bare=True), id="no-code"),
        pytest.param(
            b'{"error_code": 5, "message": "m", "stack_trace": 1}',
            UpstreamError(None, "m", None, bare=False),
            id="odd-types",
        ),
        pytest.param(
            b'{"message": "m", "details": [{"@type": "x"}]}',
            UpstreamError(None, "m", None, bare=False),
            id="databricks",
        ),
    ],
)
def test_read_error(body: bytes, error: UpstreamError) -> None:
    assert v2.read_error(body) == error


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"detail":"Not Found"}', id="fastapi"),
        pytest.param(b'{"message": 5}', id="message-not-str"),
        pytest.param(b"Internal Server Error", id="text"),
        pytest.param(b"[1]", id="list"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff", id="not-utf8"),
        pytest.param(b"[" * 5000 + b"]" * 5000, id="too-deep"),
    ],
)
def test_read_error_not_an_mlflow_error(body: bytes) -> None:
    assert v2.read_error(body) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"Request processing time exceeded limit", True, id="exact"),
        pytest.param(b"  Request processing time exceeded limit\n", True, id="whitespace"),
        pytest.param(b'"Request processing time exceeded limit"', False, id="json-string"),
        pytest.param(b"Request processing time", False, id="prefix"),
    ],
)
def test_is_timeout_body(body: bytes, expected: bool) -> None:
    assert v2.is_timeout_body(body) is expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            "The input must be a JSON dictionary with exactly one of the input fields {'a'}. "
            "Received a list.",
            True,
            id="2.0.1-shape",
        ),
        pytest.param(
            "Invalid input. setting an array element with a sequence.", True, id="invalid-input"
        ),
        pytest.param(
            "Failed to parse input from JSON. Ensure that input is a valid JSON formatted string.",
            True,
            id="json",
        ),
        pytest.param("Failed to parse data as TF serving input. One of ...", True, id="tensor"),
        pytest.param("Dataframe split format must have 'data' field", True, id="split"),
        pytest.param(
            "Dataframe records format must be a list of records. Got dictionary.",
            True,
            id="records",
        ),
        pytest.param("Model is missing inputs ['x'].", False, id="model"),
    ],
)
def test_is_parse_error(message: str, expected: bool) -> None:
    assert v2.is_parse_error(message) is expected


MISSING = (
    "Failed to predict data '   a\\n0  1'. \nError: Failed to enforce schema of data "
    "'   a\\n0  1' with schema '['a': double (required)]'. Error: Model is missing inputs ['b']."
)


# §6.4 M1 message extraction.
@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(MISSING, "Model is missing inputs ['b'].", id="schema"),
        pytest.param(
            "Failed to predict data 'x'. \nError: Invalid parameters found: {('t', 'e')}",
            "Invalid parameters found: {('t', 'e')}",
            id="params",
        ),
        pytest.param(
            "Failed to predict data 'x'. \nError: a\nError: b", "a\nError: b", id="first-separator"
        ),
        pytest.param(
            "Failed to predict data 'x'. \nError: "
            "Failed to enforce schema of data 'x'. Error: a'. Error: b",
            "b",
            id="schema-last-separator",
        ),
        pytest.param(
            "Failed to predict data 'x'. \nError: "
            "Failed to enforce schema of data 'x' without tail",
            "Failed to enforce schema of data 'x' without tail",
            id="schema-without-separator",
        ),
        pytest.param(
            "Failed to predict data 'x'.", "Failed to predict data 'x'.", id="no-separator"
        ),
    ],
)
def test_predict_error_message(message: str, expected: str) -> None:
    assert v2.predict_error_message(message) == expected
