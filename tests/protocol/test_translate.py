"""legacy ⇄ new translation: §4.1 / §4.2 requests, §5.3 successes, §6.4 errors (M1–M13)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.errors import E4_CSV, E8_MODEL_ERROR, BadRequest, UpstreamProtocolError
from proxy.models import CsvMode, Reply, UpstreamNan, V2Request
from proxy.protocol.legacy import parse_request
from proxy.protocol.translate import (
    legacy_to_v2,
    v2_to_legacy,
)

JSON = "application/json"
SPLIT = "application/json; format=pandas-split"
RECORDS = "application/json; format=pandas-records"
NUMPY = "application/json-numpy-split"
CSV = "text/csv"

KEEP, NULL = UpstreamNan.KEEP, UpstreamNan.NULL
PASS, TO_SPLIT = CsvMode.PASSTHROUGH, CsvMode.SPLIT

ROWS = b'[{"a": 1, "b": 2.5}, {"a": 3, "b": null}]'
FRAME = b'{"columns": ["a", "b"], "index": [0, 1], "data": [[1, 2.5], [3, null]]}'
BIG = 123456789012345678901234567890


def translate(
    header: str,
    body: bytes,
    *,
    csv_mode: CsvMode = PASS,
    upstream_nan: UpstreamNan = KEEP,
    accept_v2_bodies: bool = False,
) -> V2Request:
    req = parse_request(header, body, accept_v2_bodies=accept_v2_bodies)
    return legacy_to_v2(req, csv_mode=csv_mode, upstream_nan=upstream_nan)


# §4.1: one row per legacy format; the bytes are exact (wrapped where nothing changes).
@pytest.mark.parametrize(
    ("header", "body", "content_type", "expected"),
    [
        pytest.param(CSV, b"a,b\n1,2\n", CSV, b"a,b\n1,2\n", id="csv-passthrough"),
        pytest.param(CSV, b"", CSV, b"", id="csv-empty-passthrough"),
        pytest.param(
            "text/csv; charset=utf-8", b"a\n1\n", CSV, b"a\n1\n", id="csv-charset-dropped"
        ),
        pytest.param(JSON, ROWS, JSON, b'{"dataframe_records": ' + ROWS + b"}", id="json-list"),
        pytest.param(JSON, b"[]", JSON, b'{"dataframe_records": []}', id="json-empty-list"),
        pytest.param(JSON, FRAME, JSON, b'{"dataframe_split": ' + FRAME + b"}", id="json-dict"),
        pytest.param(
            JSON,
            b'{"columns": ["a"]}',
            JSON,
            b'{"dataframe_split": {"columns": ["a"], "data": []}}',
            id="json-dict-no-data",
        ),
        pytest.param(JSON, b"{}", JSON, b'{"dataframe_split": {"data": []}}', id="json-empty-dict"),
        pytest.param(
            JSON, b'{"instances": [[1, 2]]}', JSON, b'{"instances": [[1, 2]]}', id="instances"
        ),
        pytest.param(JSON, b'{"inputs": {"a": [1]}}', JSON, b'{"inputs": {"a": [1]}}', id="inputs"),
        pytest.param(
            JSON,
            b'{"inputs": [[1, 2], [3]]}',
            JSON,
            b'{"inputs": [[1, 2], [3]]}',
            id="inputs-ragged",
        ),
        pytest.param(SPLIT, FRAME, JSON, b'{"dataframe_split": ' + FRAME + b"}", id="pandas-split"),
        pytest.param(
            SPLIT,
            b'{"index": [7], "columns": ["a"], "data": [[1]]}',
            JSON,
            b'{"dataframe_split": {"index": [7], "columns": ["a"], "data": [[1]]}}',
            id="pandas-split-index",
        ),
        pytest.param(
            SPLIT,
            b'{"index": [], "columns": ["a"]}',
            JSON,
            b'{"dataframe_split": {"index": [], "columns": ["a"], "data": []}}',
            id="pandas-split-no-data",
        ),
        pytest.param(
            "application/json; format=pandas-split; charset=utf-8",
            FRAME,
            JSON,
            b'{"dataframe_split": ' + FRAME + b"}",
            id="charset-utf8-dropped",
        ),
        pytest.param(
            RECORDS, ROWS, JSON, b'{"dataframe_records": ' + ROWS + b"}", id="pandas-records"
        ),
        pytest.param(
            RECORDS,
            b'{"a": [1, 2], "b": ["x", "y"]}',
            JSON,
            b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}}',
            id="records-columns",
        ),
        pytest.param(
            RECORDS,
            b"{}",
            JSON,
            b'{"dataframe_split": {"columns": [], "data": []}}',
            id="records-empty-columns",
        ),
        pytest.param(NUMPY, FRAME, JSON, b'{"dataframe_split": ' + FRAME + b"}", id="numpy-split"),
        pytest.param(
            NUMPY,
            b'{"data": [[1]], "x": 0, "columns": ["a"], "index": [0]}',
            JSON,
            b'{"dataframe_split": {"data": [[1]], "columns": ["a"], "index": [0]}}',
            id="numpy-extra-keys-dropped",
        ),
    ],
)
def test_legacy_to_v2(header: str, body: bytes, content_type: str, expected: bytes) -> None:
    assert translate(header, body) == V2Request(content_type, expected)


# §4.1 / §8.8: accept_v2_bodies forwards the new-protocol body unchanged.
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            b'{"dataframe_split": {"data": [[1.0]]}, "params": {"k": 1}}', id="split-params"
        ),
        pytest.param(b'{"inputs": [[1]], "params": {"k": 1}}', id="inputs-params"),
        pytest.param(b'{"dataframe_records": [{"a": NaN}]}', id="records-nan"),
    ],
)
def test_v2_body_forwarded_unchanged(body: bytes) -> None:
    assert translate(JSON, body, accept_v2_bodies=True) == V2Request(JSON, body)


# §4.2: nothing a client sent is altered on the wrapped path: spelling, order, tokens.
@pytest.mark.parametrize(
    ("header", "body", "key"),
    [
        pytest.param(
            SPLIT,
            b'{"data": [[1.50, 1e5, -0.0, 1E-7, 10]], "columns": ["z", "a", "m", "b", "c"]}',
            "dataframe_split",
            id="spelling-and-order",
        ),
        pytest.param(
            SPLIT, b'{"data": [[NaN, Infinity, -Infinity]]}', "dataframe_split", id="nan-tokens"
        ),
        pytest.param(
            JSON,
            b'[{"b": 1, "a": "\\u00e9"}, {"a": "\xc3\xa9", "b": 2}]',
            "dataframe_records",
            id="escapes-and-utf8",
        ),
        pytest.param(
            JSON,
            b'{"columns": ["a"], "data": [[' + str(BIG).encode() + b"]]}",
            "dataframe_split",
            id="big-int",
        ),
        pytest.param(
            JSON, b'{"data": [[1]], "data": [[2]]}', "dataframe_split", id="duplicate-keys-as-sent"
        ),
    ],
)
def test_wrapped_body_keeps_client_bytes(header: str, body: bytes, key: str) -> None:
    assert translate(header, body).body == b'{"' + key.encode() + b'": ' + body + b"}"


@pytest.mark.parametrize(
    ("header", "body", "upstream_nan", "expected"),
    [
        pytest.param(
            SPLIT,
            b'{"data": [[NaN, 1]]}',
            NULL,
            b'{"dataframe_split": {"data": [[null, 1]]}}',
            id="split",
        ),
        pytest.param(
            JSON,
            b'[{"a": Infinity, "b": -Infinity}]',
            NULL,
            b'{"dataframe_records": [{"a": null, "b": null}]}',
            id="records",
        ),
        pytest.param(
            JSON, b'{"instances": [[NaN]]}', NULL, b'{"instances": [[null]]}', id="instances"
        ),
        pytest.param(
            JSON, b'{"inputs": {"a": [NaN]}}', NULL, b'{"inputs": {"a": [null]}}', id="inputs"
        ),
        pytest.param(
            NUMPY,
            b'{"index": [0], "columns": ["a"], "data": [[NaN]]}',
            NULL,
            b'{"dataframe_split": {"index": [0], "columns": ["a"], "data": [[null]]}}',
            id="numpy",
        ),
        pytest.param(
            RECORDS,
            b'{"a": [NaN]}',
            NULL,
            b'{"dataframe_split": {"columns": ["a"], "data": [[null]]}}',
            id="records-columns",
        ),
        pytest.param(
            SPLIT,
            b'{"columns": ["a"], "index": [NaN]}',
            NULL,
            b'{"dataframe_split": {"columns": ["a"], "index": [null], "data": []}}',
            id="split-no-data",
        ),
        pytest.param(
            SPLIT,
            b'{"columns": ["NaN"], "data": [[1.5]]}',
            NULL,
            b'{"dataframe_split": {"columns": ["NaN"], "data": [[1.5]]}}',
            id="token-in-string-only",
        ),
        pytest.param(
            SPLIT,
            b'{"data": [[1.50]]}',
            NULL,
            b'{"dataframe_split": {"data": [[1.50]]}}',
            id="no-token",
        ),
        pytest.param(
            SPLIT,
            b'{"data": [[1e999]]}',
            NULL,
            b'{"dataframe_split": {"data": [[1e999]]}}',
            id="overflow-is-not-a-token",
        ),
        pytest.param(
            SPLIT,
            b'{"data": [[NaN, ' + str(BIG).encode() + b"]]}",
            NULL,
            b'{"dataframe_split": {"data": [[null, ' + str(BIG).encode() + b"]]}}",
            id="big-int-kept-on-rewrite",
        ),
        pytest.param(
            JSON,
            b'{"inputs": [NaN], "params": {"t": NaN}}',
            NULL,
            b'{"inputs": [null], "params": {"t": null}}',
            id="v2",
        ),
    ],
)
def test_upstream_nan(header: str, body: bytes, upstream_nan: UpstreamNan, expected: bytes) -> None:
    out = translate(header, body, upstream_nan=upstream_nan, accept_v2_bodies=True)
    assert out == V2Request(JSON, expected)


# §4.1 L-CSV `csv_mode: split`: the proxy reads the CSV itself.
@pytest.mark.parametrize(
    ("body", "upstream_nan", "expected"),
    [
        pytest.param(
            b"a,b\n1,2.5\n",
            KEEP,
            b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2.5]]}}',
            id="typed",
        ),
        pytest.param(
            b"a,b\n1,x\nNA,\n",
            KEEP,
            b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1.0, "x"], [NaN, NaN]]}}',
            id="na-keep",
        ),
        pytest.param(
            b"a,b\n1,x\nNA,\n",
            NULL,
            b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1.0, "x"], [null, null]]}}',
            id="na-null",
        ),
        pytest.param(
            b"a\n", KEEP, b'{"dataframe_split": {"columns": ["a"], "data": []}}', id="header-only"
        ),
        pytest.param(
            b"h\n\xc3\xa9\n",
            KEEP,
            b'{"dataframe_split": {"columns": ["h"], "data": [["\\u00e9"]]}}',
            id="utf8",
        ),
    ],
)
def test_csv_split_mode(body: bytes, upstream_nan: UpstreamNan, expected: bytes) -> None:
    out = translate(CSV, body, csv_mode=TO_SPLIT, upstream_nan=upstream_nan)
    assert out == V2Request(JSON, expected)


def test_csv_split_mode_empty_body_is_e4() -> None:
    with pytest.raises(BadRequest) as info:
        translate(CSV, b"", csv_mode=TO_SPLIT)
    assert info.value.message == E4_CSV


# §5.3: success.
@pytest.mark.parametrize(
    ("body", "wrapper", "expected"),
    [
        pytest.param(b'{"predictions": [0, 1, 2]}', None, b"[0, 1, 2]", id="list"),
        pytest.param(b'{"predictions":[0,1,2]}', None, b"[0, 1, 2]", id="compact-upstream"),
        pytest.param(
            b'{"predictions": [[2.0, NaN], [6.0, 8.0]]}',
            None,
            b"[[2.0, NaN], [6.0, 8.0]]",
            id="nan",
        ),
        pytest.param(
            b'{"predictions": {"b": [1.0], "a": [3.0]}}',
            None,
            b'{"b": [1.0], "a": [3.0]}',
            id="dict-order",
        ),
        pytest.param(
            b'{"predictions": [{"score": 0.27451, "label": "short", "row": 0}]}',
            None,
            b'[{"score": 0.27451, "label": "short", "row": 0}]',
            id="frame-records",
        ),
        pytest.param(b'{"predictions": []}', None, b"[]", id="empty"),
        pytest.param(b'{"predictions": ["\xc3\xa9"]}', None, b'["\\u00e9"]', id="ascii-escaped"),
        pytest.param(
            b'{"predictions": [206.11667724510562]}', None, b"[206.11667724510562]", id="float-repr"
        ),
        pytest.param(
            b'{"predictions": [1.0e2, 1E5]}', None, b"[100.0, 100000.0]", id="float-spelling"
        ),
        pytest.param(
            b'{"predictions": [' + str(BIG).encode() + b"]}",
            None,
            b"[" + str(BIG).encode() + b"]",
            id="big-int",
        ),
        pytest.param(
            b'{"model": "x", "predictions": [1], "extra": {}}',
            None,
            b"[1]",
            id="extra-keys-dropped",
        ),
        pytest.param(b'{"predictions": [1]}', "result", b'{"result": [1]}', id="wrapper-attr"),
        pytest.param(b'{"predictions": null}', None, b"null", id="null"),
    ],
)
def test_v2_to_legacy_success(body: bytes, wrapper: str | None, expected: bytes) -> None:
    reply = v2_to_legacy(200, JSON, body, wrapper_attr=wrapper)
    assert reply == Reply(200, expected, "application/json")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"outputs": [1]}', id="no-predictions"),
        pytest.param(b"[0, 1, 2]", id="bare"),
        pytest.param(b"OK", id="not-json"),
        pytest.param(b"", id="empty"),
    ],
)
def test_v2_to_legacy_success_without_predictions_is_upe(body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError) as info:
        v2_to_legacy(200, JSON, body)
    assert info.value.to_reply().status == 502


def _body(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


PREDICT = (
    "Failed to predict data '   a\\n0  1'. \nError: Failed to enforce schema of data "
    "'   a\\n0  1' with schema '['a': double (required)]'. Error: Model is missing inputs ['b']."
)
CSV_400 = (
    "Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid "
    "CSV-formatted Pandas DataFrame produced using the `pandas.DataFrame.to_csv()` method. "
    "Error: 'No columns to parse from file'"
)
KAM = {"sqlstate": "KAM00", "error_class": "INVALID_PARAMETER_VALUE"}
DATABRICKS_404 = {
    "error_code": "RESOURCE_DOES_NOT_EXIST",
    "message": "Endpoint with name 'x' does not exist.",
    "details": [{"@type": "type.googleapis.com/google.rpc.RequestInfo", "request_id": "r"}],
}


# §6.4, top to bottom. `expected` is (status, error_code, message, stack_trace or None).
@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(
            400,
            _body(
                {"error_code": "INVALID_PARAMETER_VALUE", "message": PREDICT, "sqlstate": "KAM01"}
            ),
            (400, "BAD_REQUEST", "Model is missing inputs ['b'].", None),
            id="M1-schema",
        ),
        pytest.param(
            500,
            _body(
                {
                    "error_code": "INTERNAL_ERROR",
                    "message": "Failed to predict data 'x'. \nError: boom",
                    "stack_trace": "t",
                }
            ),
            (400, "BAD_REQUEST", "boom", None),
            id="M1-any-status",
        ),
        pytest.param(
            401,
            _body({"error_code": "X", "message": "Failed to predict data 'x'."}),
            (400, "BAD_REQUEST", "Failed to predict data 'x'.", None),
            id="M1-before-M7",
        ),
        pytest.param(
            500,
            _body({"error_code": "INTERNAL_ERROR", "message": "model crashed"}),
            (500, "INTERNAL_ERROR", "model crashed", None),
            id="M12-2.0.1-500-not-M2",
        ),
        pytest.param(
            503,
            _body({"error_code": "INTERNAL_ERROR", "message": "model crashed"}),
            (503, "TEMPORARILY_UNAVAILABLE", "model crashed", None),
            id="M11-json-internal-error-not-M2",
        ),
        pytest.param(
            504,
            _body({"error_code": "INTERNAL_ERROR", "message": "model crashed"}),
            (504, "TEMPORARILY_UNAVAILABLE", "Request processing time exceeded limit", None),
            id="M10-json-internal-error-not-M2",
        ),
        pytest.param(
            502,
            _body({"error_code": "INVALID_STATE", "message": "model crashed"}),
            (502, "INTERNAL_ERROR", "model crashed", None),
            id="M12-502-json-not-M2",
        ),
        pytest.param(
            400,
            _body(
                {
                    "error_code": "INVALID_PARAMETER_VALUE",
                    "message": "Model is missing inputs ['b'].",
                }
            ),
            (400, "BAD_REQUEST", "Model is missing inputs ['b'].", None),
            id="M2-2.0.1-400",
        ),
        pytest.param(
            400,
            _body({"error_code": "BAD_REQUEST", "message": E8_MODEL_ERROR, "stack_trace": "T"}),
            (400, "BAD_REQUEST", E8_MODEL_ERROR, "T"),
            id="M3",
        ),
        pytest.param(
            400,
            _body(
                {"error_code": "BAD_REQUEST", "message": E8_MODEL_ERROR, **KAM, "stack_trace": "T"}
            ),
            (400, "BAD_REQUEST", E8_MODEL_ERROR, "T"),
            id="M3-3.x-keys-dropped",
        ),
        pytest.param(
            400,
            _body({"error_code": "BAD_REQUEST", "message": E8_MODEL_ERROR}),
            (400, "BAD_REQUEST", E8_MODEL_ERROR, None),
            id="M3-no-trace",
        ),
        pytest.param(
            400,
            _body({"error_code": "BAD_REQUEST", "message": CSV_400, **KAM, "stack_trace": "T"}),
            (400, "BAD_REQUEST", E4_CSV, "T"),
            id="M4",
        ),
        pytest.param(
            400,
            _body(
                {
                    "error_code": "BAD_REQUEST",
                    "message": "Invalid input. setting an array element",
                    **KAM,
                }
            ),
            (400, "BAD_REQUEST", "Invalid input. setting an array element", None),
            id="M5",
        ),
        pytest.param(
            400,
            _body(
                {
                    "error_code": "INVALID_PARAMETER_VALUE",
                    "message": "Dataframe split format must have 'data'",
                }
            ),
            (400, "BAD_REQUEST", "Dataframe split format must have 'data'", None),
            id="M5-parse-error-not-M2",
        ),
        pytest.param(
            400,
            _body({"error_code": "INVALID_PARAMETER_VALUE", "message": "m", "stack_trace": "T"}),
            (400, "BAD_REQUEST", "m", None),
            id="M5-trace-dropped",
        ),
        pytest.param(
            400,
            _body({"message": "no code"}),
            (400, "BAD_REQUEST", "no code", None),
            id="M5-no-code-not-M2",
        ),
        pytest.param(
            401,
            _body({"error_code": "UNAUTHENTICATED", "message": "Invalid token"}),
            (401, "CUSTOMER_UNAUTHORIZED", "Invalid token", None),
            id="M7-401",
        ),
        pytest.param(
            401,
            b"Unauthorized",
            (401, "CUSTOMER_UNAUTHORIZED", "Unauthorized", None),
            id="M7-401-text",
        ),
        pytest.param(
            403,
            _body({"error_code": "PERMISSION_DENIED", "message": "nope", "details": []}),
            (403, "PERMISSION_DENIED", "nope", None),
            id="M7-403",
        ),
        pytest.param(
            403,
            b"<html>",
            (403, "PERMISSION_DENIED", "Permission denied", None),
            id="M7-403-text",
        ),
        pytest.param(
            404,
            _body(DATABRICKS_404),
            (404, "RESOURCE_DOES_NOT_EXIST", "Endpoint with name 'x' does not exist.", None),
            id="M8-databricks",
        ),
        pytest.param(
            404,
            b'{"detail":"Not Found"}',
            (404, "RESOURCE_DOES_NOT_EXIST", "Not Found", None),
            id="M8-fastapi",
        ),
        pytest.param(
            429,
            _body({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}),
            (429, "REQUEST_LIMIT_EXCEEDED", "slow down", None),
            id="M9",
        ),
        pytest.param(
            429,
            b"",
            (429, "REQUEST_LIMIT_EXCEEDED", "Too Many Requests", None),
            id="M9-empty",
        ),
        pytest.param(
            504,
            b"Request processing time exceeded limit",
            (504, "TEMPORARILY_UNAVAILABLE", "Request processing time exceeded limit", None),
            id="M10-mlflow",
        ),
        pytest.param(
            504,
            _body({"error_code": "DEADLINE_EXCEEDED", "message": "late"}),
            (504, "TEMPORARILY_UNAVAILABLE", "Request processing time exceeded limit", None),
            id="M10-json",
        ),
        pytest.param(
            500,
            b"Request processing time exceeded limit",
            (504, "TEMPORARILY_UNAVAILABLE", "Request processing time exceeded limit", None),
            id="M10-body-any-status",
        ),
        pytest.param(
            503,
            _body({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "scaling from zero"}),
            (503, "TEMPORARILY_UNAVAILABLE", "scaling from zero", None),
            id="M11",
        ),
        pytest.param(
            503,
            b"upstream connect error",
            (503, "TEMPORARILY_UNAVAILABLE", "Service Unavailable", None),
            id="M11-text",
        ),
        pytest.param(
            500,
            b"Internal Server Error",
            (500, "INTERNAL_ERROR", "Upstream error 500", None),
            id="M12-text",
        ),
        pytest.param(
            502,
            b"Bad Gateway",
            (502, "INTERNAL_ERROR", "Upstream error 502", None),
            id="M12-502",
        ),
        pytest.param(
            500,
            _body({"error_code": "INTERNAL_ERROR", "message": "x", "stack_trace": "T"}),
            (500, "INTERNAL_ERROR", "x", None),
            id="M12-trace-not-M2",
        ),
        pytest.param(
            500,
            _body(
                {
                    "error_code": "INTERNAL_ERROR",
                    "message": "x",
                    "sqlstate": "XXM00",
                    "error_class": "C",
                }
            ),
            (500, "INTERNAL_ERROR", "x", None),
            id="M12-3.x-not-M2",
        ),
        pytest.param(
            500,
            _body(
                {
                    "error_code": "INTERNAL_ERROR",
                    "message": "Failed to parse data as TF serving input. x",
                }
            ),
            (500, "INTERNAL_ERROR", "Failed to parse data as TF serving input. x", None),
            id="M12-2.0.1-parse-error-not-M2",
        ),
        pytest.param(
            500,
            _body({"error_code": "BAD_REQUEST", "message": "x"}),
            (500, "INTERNAL_ERROR", "x", None),
            id="M12-bad-request-code-not-M2",
        ),
        pytest.param(
            599,
            b"",
            (599, "INTERNAL_ERROR", "Upstream error 599", None),
            id="M12-599",
        ),
    ],
)
def test_v2_to_legacy_error(
    status: int, body: bytes, expected: tuple[int, str, str, str | None]
) -> None:
    reply = v2_to_legacy(status, JSON, body)
    want_status, error_code, message, stack_trace = expected
    want = {"error_code": error_code, "message": message}
    if stack_trace is not None:
        want["stack_trace"] = stack_trace
    # Exact bytes: key order error_code, message[, stack_trace], stdlib separators (§6).
    assert reply == Reply(want_status, json.dumps(want).encode(), "application/json")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(
            415,
            b"Unrecognized content type parameters: format.",
            id="M6-text",
        ),
        pytest.param(
            415,
            _body({"error_code": "BAD_REQUEST", "message": "m"}),
            id="M6-json",
        ),
        pytest.param(405, b'{"detail":"Method Not Allowed"}', id="M13-fastapi-405"),
        pytest.param(400, b"Bad Request", id="M13-400-text"),
        pytest.param(400, b'{"detail": [{"loc": []}]}', id="M13-400-no-message"),
        pytest.param(422, _body({"error_code": "X", "message": "m"}), id="M13-422"),
        pytest.param(302, b"", id="M13-redirect"),
        pytest.param(201, _body({"predictions": [1]}), id="M13-201"),
        pytest.param(413, b"too large", id="M13-413"),
    ],
)
def test_v2_to_legacy_protocol_error(status: int, body: bytes) -> None:
    with pytest.raises(UpstreamProtocolError) as info:
        v2_to_legacy(status, JSON, body)
    reply = info.value.to_reply()
    assert (reply.status, json.loads(reply.body)["error_code"]) == (502, "INTERNAL_ERROR")


def test_content_type_is_not_consulted() -> None:
    """The 2.21+ timeout text arrives labelled application/json (§3.2, M10)."""
    body = b"Request processing time exceeded limit"
    assert v2_to_legacy(504, "text/plain", body) == v2_to_legacy(504, JSON, body)
