"""MLflow 1.30.1 request reading: protocols.md §2.1–§2.5 and the validation column of §4.1."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from proxy.errors import (
    E1_MALFORMED_JSON,
    E2_NOT_LIST_OR_DICT,
    E3_PANDAS,
    E4_CSV,
    E5_NUMPY,
    E6A_SIGNATURE_NAME,
    E6B_KEYS,
    E6C_TF_PARSE,
    E6D_LENGTHS,
    E9_CHARSET,
    E10_CONTENT_TYPE,
    E11_PAGE,
    PROXY_STACK_TRACE,
    BadRequest,
    MissingContentType,
    UnsupportedMediaType,
)
from proxy.models import ContentType, LegacyFormat
from proxy.protocol.csvframe import read_csv
from proxy.protocol.legacy import (
    columns_to_rows,
    is_v2_envelope,
    parse_content_type,
    parse_request,
    render_predictions,
)

JSON = "application/json"
SPLIT = "application/json; format=pandas-split"
RECORDS = "application/json; format=pandas-records"
NUMPY = "application/json-numpy-split"
CSV = "text/csv"

E3_SPLIT = E3_PANDAS.format(orient="split")
E3_RECORDS = E3_PANDAS.format(orient="records")

FRAME = b'{"columns": ["a", "b"], "index": [0, 1], "data": [[1, 2.5], [3, null]]}'


def _e10(received: str) -> str:
    return E10_CONTENT_TYPE.format(content_type=received)


# §2.1: split(";"), strip, partition("="); case-sensitive names; charset value lower-cased.
@pytest.mark.parametrize(
    ("header", "mime", "charset", "fmt"),
    [
        pytest.param("application/json", JSON, "utf-8", None, id="plain"),
        pytest.param(SPLIT, JSON, "utf-8", "pandas-split", id="format"),
        pytest.param(
            "application/json;format=pandas-split", JSON, "utf-8", "pandas-split", id="no-space"
        ),
        pytest.param(
            "  application/json ;  format=pandas-split  ",
            JSON,
            "utf-8",
            "pandas-split",
            id="stripped",
        ),
        pytest.param("application/json; charset=UTF-8", JSON, "utf-8", None, id="charset-lowered"),
        pytest.param(
            "application/json; charset=latin-1", JSON, "latin-1", None, id="charset-other"
        ),
        pytest.param(
            'application/json; charset="utf-8"', JSON, '"utf-8"', None, id="charset-quoted"
        ),
        pytest.param("application/json; charset", JSON, "", None, id="charset-no-equals"),
        pytest.param(
            "application/json; Charset=latin-1", JSON, "utf-8", None, id="charset-name-case"
        ),
        pytest.param(
            "application/json; FORMAT=pandas-split", JSON, "utf-8", None, id="format-name-case"
        ),
        pytest.param(
            "application/json; format=Pandas-Split",
            JSON,
            "utf-8",
            "Pandas-Split",
            id="format-value-kept",
        ),
        pytest.param("application/json; format=", JSON, "utf-8", None, id="format-empty"),
        pytest.param(
            "application/json; format=pandas-split; format=pandas-records",
            JSON,
            "utf-8",
            "pandas-records",
            id="last-wins",
        ),
        pytest.param(
            "application/json; format=a=b", JSON, "utf-8", "a=b", id="partition-first-equals"
        ),
        pytest.param("application/json; foo=bar", JSON, "utf-8", None, id="unknown-param"),
        pytest.param("Application/JSON", "Application/JSON", "utf-8", None, id="mime-case-kept"),
        pytest.param("", "", "utf-8", None, id="empty-header"),
        pytest.param(";", "", "utf-8", None, id="only-separator"),
    ],
)
def test_parse_content_type(header: str, mime: str, charset: str, fmt: str | None) -> None:
    assert parse_content_type(header) == ContentType(header, mime, charset, fmt)


def test_parse_content_type_without_header_is_e11() -> None:
    with pytest.raises(MissingContentType):
        parse_content_type(None)


# §2.1 / §2.2: the 415s, charset before format, the header echoed as received.
@pytest.mark.parametrize(
    ("header", "text"),
    [
        pytest.param("application/json; charset=latin-1", E9_CHARSET, id="charset-latin1"),
        pytest.param(
            "application/json; format=pandas-split; charset=latin-1",
            E9_CHARSET,
            id="charset-before-format",
        ),
        pytest.param("text/plain; charset=latin-1", E9_CHARSET, id="charset-before-mime"),
        pytest.param('application/json; charset="utf-8"', E9_CHARSET, id="charset-quoted"),
        pytest.param("application/json; charset=", E9_CHARSET, id="charset-empty"),
        pytest.param("text/plain", _e10("text/plain"), id="wrong-content-type"),
        pytest.param("", _e10(""), id="empty-header"),
        pytest.param("Application/JSON", _e10("Application/JSON"), id="mime-case"),
        pytest.param(
            "application/json; format=pandas-columns",
            _e10("application/json; format=pandas-columns"),
            id="unknown-format",
        ),
        pytest.param(
            "application/json; format=Pandas-Split",
            _e10("application/json; format=Pandas-Split"),
            id="format-case",
        ),
        pytest.param(
            "text/csv; format=pandas-split",
            _e10("text/csv; format=pandas-split"),
            id="csv-with-format",
        ),
        pytest.param(
            "application/json-numpy-split; format=pandas-split",
            _e10("application/json-numpy-split; format=pandas-split"),
            id="numpy-with-format",
        ),
        pytest.param(
            "application/json ;format=x", _e10("application/json ;format=x"), id="echo-as-received"
        ),
        pytest.param("application/parquet", _e10("application/parquet"), id="parquet"),
    ],
)
def test_unsupported_media_type(header: str, text: str) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        parse_request(header, b"\xff not even utf-8")
    reply = info.value.to_reply()
    assert (reply.status, reply.content_type, reply.body) == (
        415,
        "text/plain; charset=utf-8",
        text.encode(),
    )


# §2.1: no header, or a body that is not UTF-8 (decoded after dispatch): the 500 page.
@pytest.mark.parametrize(
    ("header", "body"),
    [
        pytest.param(None, FRAME, id="no-content-type"),
        pytest.param(JSON, b'{"columns": ["\xe9"]}', id="json-latin1-bytes"),
        pytest.param(SPLIT, b"\xff", id="split-invalid-utf8"),
        pytest.param(RECORDS, b"[\xc3]", id="records-invalid-utf8"),
        pytest.param(NUMPY, b"\xed\xa0\x80", id="numpy-surrogate"),
        pytest.param(CSV, b"a,b\n\xff,1\n", id="csv-invalid-utf8"),
    ],
)
def test_missing_content_type_page(header: str | None, body: bytes) -> None:
    with pytest.raises(MissingContentType) as info:
        parse_request(header, body)
    reply = info.value.to_reply()
    assert (reply.status, reply.content_type, reply.body) == (
        500,
        "text/html; charset=utf-8",
        E11_PAGE.encode(),
    )


# §2.2 / §2.3 / §4.1: requests 1.30.1 accepted, and how they were read.
@pytest.mark.parametrize(
    ("header", "body", "fmt"),
    [
        pytest.param(CSV, b"a,b\n1,2\n", LegacyFormat.CSV, id="csv"),
        pytest.param(CSV, b"", LegacyFormat.CSV, id="csv-empty-forwarded"),
        pytest.param(CSV, b"not, really\ncsv", LegacyFormat.CSV, id="csv-not-checked"),
        pytest.param("text/csv; charset=utf-8", b"a\n1\n", LegacyFormat.CSV, id="csv-charset"),
        pytest.param(JSON, b"[]", LegacyFormat.JSON_RECORDS, id="json-empty-list"),
        pytest.param(JSON, b'[{"a": 1}]', LegacyFormat.JSON_RECORDS, id="json-list"),
        pytest.param(JSON, FRAME, LegacyFormat.JSON_SPLIT, id="json-dict"),
        pytest.param(JSON, b"{}", LegacyFormat.JSON_SPLIT, id="json-empty-dict"),
        pytest.param(
            JSON, b'{"columns": ["a"]}', LegacyFormat.JSON_SPLIT, id="json-columns-no-data"
        ),
        pytest.param(
            JSON,
            b'{"data": [[NaN, Infinity, -Infinity]]}',
            LegacyFormat.JSON_SPLIT,
            id="json-nan-tokens",
        ),
        pytest.param(JSON, b' \n{"data": []}\n ', LegacyFormat.JSON_SPLIT, id="json-whitespace"),
        pytest.param(JSON, b'{"instances": [[1, 2]]}', LegacyFormat.INSTANCES, id="instances"),
        pytest.param(JSON, b'{"inputs": [[1, 2]]}', LegacyFormat.INPUTS, id="inputs"),
        pytest.param(
            "application/json; charset=utf-8", FRAME, LegacyFormat.JSON_SPLIT, id="charset-utf8"
        ),
        pytest.param(
            "application/json; Charset=latin-1",
            FRAME,
            LegacyFormat.JSON_SPLIT,
            id="charset-name-ignored",
        ),
        pytest.param(
            "application/json; FORMAT=pandas-records",
            FRAME,
            LegacyFormat.JSON_SPLIT,
            id="format-name-ignored",
        ),
        pytest.param(
            "application/json; format=", b"[]", LegacyFormat.JSON_RECORDS, id="format-empty"
        ),
        pytest.param(
            "application/json; foo=bar", b"[]", LegacyFormat.JSON_RECORDS, id="unknown-param"
        ),
        pytest.param(SPLIT, FRAME, LegacyFormat.PANDAS_SPLIT, id="split"),
        pytest.param(SPLIT, b'{"columns": ["a"]}', LegacyFormat.PANDAS_SPLIT, id="split-no-data"),
        pytest.param(SPLIT, b"{}", LegacyFormat.PANDAS_SPLIT, id="split-empty"),
        pytest.param(RECORDS, b'[{"a": 1}, {"a": 2}]', LegacyFormat.PANDAS_RECORDS, id="records"),
        pytest.param(RECORDS, b"[[1, 2], [3, 4]]", LegacyFormat.PANDAS_RECORDS, id="records-lists"),
        pytest.param(
            RECORDS,
            b'{"a": [1, 2], "b": ["x", "y"]}',
            LegacyFormat.PANDAS_RECORDS,
            id="records-columns",
        ),
        pytest.param(RECORDS, b"{}", LegacyFormat.PANDAS_RECORDS, id="records-empty-columns"),
        pytest.param(NUMPY, FRAME, LegacyFormat.NUMPY_SPLIT, id="numpy-split"),
        pytest.param(
            NUMPY,
            b'{"index": [], "columns": [], "data": [], "x": 1}',
            LegacyFormat.NUMPY_SPLIT,
            id="numpy-extra-key",
        ),
    ],
)
def test_accepted(header: str, body: bytes, fmt: LegacyFormat) -> None:
    req = parse_request(header, body)
    assert req.format is fmt
    assert req.body is body
    assert req.content_type == parse_content_type(header)
    if fmt is LegacyFormat.CSV:
        assert req.payload is None
    else:
        assert json.dumps(req.payload) == json.dumps(json.loads(body))


# §2.3, §2.4, §4.1: the 400s with 1.30.1's text.
@pytest.mark.parametrize(
    ("header", "body", "message"),
    [
        pytest.param(JSON, b'{"columns": ["a", ', E1_MALFORMED_JSON, id="json-malformed"),
        pytest.param(JSON, b"", E1_MALFORMED_JSON, id="json-empty"),
        pytest.param(JSON, b"  \n", E1_MALFORMED_JSON, id="json-whitespace-only"),
        pytest.param(JSON, b'\xef\xbb\xbf{"data": []}', E1_MALFORMED_JSON, id="json-bom"),
        pytest.param(JSON, b"{'data': []}", E1_MALFORMED_JSON, id="json-single-quotes"),
        pytest.param(JSON, b"nan", E1_MALFORMED_JSON, id="json-lowercase-nan"),
        pytest.param(JSON, b"42", E2_NOT_LIST_OR_DICT, id="json-int"),
        pytest.param(JSON, b"1.5", E2_NOT_LIST_OR_DICT, id="json-float"),
        pytest.param(JSON, b'"text"', E2_NOT_LIST_OR_DICT, id="json-string"),
        pytest.param(JSON, b"null", E2_NOT_LIST_OR_DICT, id="json-null"),
        pytest.param(JSON, b"true", E2_NOT_LIST_OR_DICT, id="json-bool"),
        pytest.param(JSON, b"NaN", E2_NOT_LIST_OR_DICT, id="json-nan"),
        pytest.param(
            JSON, b'{"columns": ["a"], "data": [], "extra": 1}', E3_SPLIT, id="json-extra-key"
        ),
        pytest.param(JSON, b'{"dataframe_split": {"data": []}}', E3_SPLIT, id="json-v2-split"),
        pytest.param(JSON, b'{"dataframe_records": []}', E3_SPLIT, id="json-v2-records"),
        pytest.param(
            JSON, b'{"dataframe_split": {"data": []}, "params": {}}', E3_SPLIT, id="json-v2-params"
        ),
        pytest.param(JSON, b'{"signature_name": "x"}', E3_SPLIT, id="json-signature-name-only"),
        pytest.param(SPLIT, b'{"columns": ["a", ', E3_SPLIT, id="split-malformed"),
        pytest.param(SPLIT, b"", E3_SPLIT, id="split-empty-body"),
        pytest.param(SPLIT, b"[]", E3_SPLIT, id="split-list"),
        pytest.param(SPLIT, b"42", E3_SPLIT, id="split-scalar"),
        pytest.param(SPLIT, b'{"instances": [[1]]}', E3_SPLIT, id="split-instances"),
        pytest.param(SPLIT, b'{"inputs": [[1]]}', E3_SPLIT, id="split-inputs"),
        pytest.param(SPLIT, b'{"dataframe_split": {"data": []}}', E3_SPLIT, id="split-v2"),
        pytest.param(SPLIT, b'{"data": [], "x": 1}', E3_SPLIT, id="split-extra-key"),
        pytest.param(RECORDS, b"[{", E3_RECORDS, id="records-malformed"),
        pytest.param(RECORDS, b"", E3_RECORDS, id="records-empty-body"),
        pytest.param(RECORDS, b'"text"', E3_RECORDS, id="records-string"),
        pytest.param(RECORDS, b"42", E3_RECORDS, id="records-number"),
        pytest.param(RECORDS, b"null", E3_RECORDS, id="records-null"),
        pytest.param(RECORDS, b'{"a": [1, 2], "b": [1]}', E3_RECORDS, id="records-columns-unequal"),
        pytest.param(RECORDS, b'{"a": 1, "b": 2}', E3_RECORDS, id="records-all-scalars"),
        pytest.param(RECORDS, b'{"a": {"x": 1}}', E3_RECORDS, id="records-object-column"),
        pytest.param(NUMPY, b'{"columns": ["a"], "data": [[1]]}', E5_NUMPY, id="numpy-no-index"),
        pytest.param(NUMPY, b'{"index": [0], "data": [[1]]}', E5_NUMPY, id="numpy-no-columns"),
        pytest.param(NUMPY, b'{"index": [0], "columns": ["a"]}', E5_NUMPY, id="numpy-no-data"),
        pytest.param(NUMPY, b"[[1]]", E5_NUMPY, id="numpy-list"),
        pytest.param(NUMPY, b"{", E5_NUMPY, id="numpy-malformed"),
        pytest.param(NUMPY, b"", E5_NUMPY, id="numpy-empty-body"),
    ],
)
def test_bad_request(header: str, body: bytes, message: str) -> None:
    _assert_bad_request(header, body, message)


def _assert_bad_request(
    header: str, body: bytes, message: str, *, accept_v2_bodies: bool = False
) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request(header, body, accept_v2_bodies=accept_v2_bodies)
    reply = info.value.to_reply()
    # Every E1–E6 reply of 1.30.1 carried a traceback (§6.1 "+st"); the key stays (§6.5).
    assert (reply.status, reply.content_type) == (400, "application/json")
    assert (
        reply.body
        == json.dumps(
            {"error_code": "BAD_REQUEST", "message": message, "stack_trace": PROXY_STACK_TRACE}
        ).encode()
    )


# §2.5: TF-serving bodies. Key rules first, then what parse_tf_serving_input refused
# before the model; signature casts and ragged rows (§8.14, §8.15) are not refused.
@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(
            {"instances": [[1]], "signature_name": "x"}, E6A_SIGNATURE_NAME, id="signature-name"
        ),
        pytest.param(
            {"signature_name": "x", "instances": [], "inputs": []},
            E6A_SIGNATURE_NAME,
            id="signature-name-first",
        ),
        pytest.param({"instances": [[1]], "inputs": [[1]]}, E6B_KEYS, id="both"),
        pytest.param({"inputs": [[1]], "params": {"k": 1}}, E6B_KEYS, id="inputs-params"),
        pytest.param({"instances": [[1]], "params": {}}, E6B_KEYS, id="instances-params"),
        pytest.param({"instances": [[1]], "extra": 1}, E6B_KEYS, id="extra-key"),
        pytest.param({"instances": 5}, E6C_TF_PARSE, id="instances-number"),
        pytest.param({"instances": 1.5}, E6C_TF_PARSE, id="instances-float"),
        pytest.param({"instances": None}, E6C_TF_PARSE, id="instances-null"),
        pytest.param({"instances": True}, E6C_TF_PARSE, id="instances-bool"),
        pytest.param({"instances": {"a": [1]}}, E6C_TF_PARSE, id="instances-object"),
        pytest.param({"instances": [{"a": 1}, [1]]}, E6C_TF_PARSE, id="instances-row-not-object"),
        pytest.param({"instances": [{"a": 1}, 5]}, E6C_TF_PARSE, id="instances-row-scalar"),
        pytest.param(
            {"instances": [{"a": 1, "b": 2}, {"a": 3}]}, E6D_LENGTHS, id="rows-unequal-keys"
        ),
        pytest.param({"inputs": {"a": [1, 2], "b": [1]}}, E6D_LENGTHS, id="columns-unequal"),
        pytest.param(
            {"inputs": {"a": [1, 2], "b": [1], "c": 5}},
            E6D_LENGTHS,
            id="columns-mismatch-before-scalar",
        ),
        pytest.param({"inputs": {"a": [], "b": [[1, 2]]}}, E6D_LENGTHS, id="columns-empty-vs-one"),
    ],
)
def test_tensor_rejected(body: dict[str, Any], message: str) -> None:
    _assert_bad_request(JSON, json.dumps(body).encode(), message)


@pytest.mark.parametrize(
    ("body", "fmt"),
    [
        pytest.param({"instances": [[1, 2], [3, 4]]}, LegacyFormat.INSTANCES, id="instances-2d"),
        pytest.param({"instances": [1.5, 2.5]}, LegacyFormat.INSTANCES, id="instances-1d"),
        pytest.param({"instances": []}, LegacyFormat.INSTANCES, id="instances-empty"),
        pytest.param({"instances": "abc"}, LegacyFormat.INSTANCES, id="instances-string"),
        pytest.param({"instances": ""}, LegacyFormat.INSTANCES, id="instances-empty-string"),
        pytest.param({"instances": {}}, LegacyFormat.INSTANCES, id="instances-empty-object"),
        pytest.param({"instances": [[1, 2], [3]]}, LegacyFormat.INSTANCES, id="instances-ragged"),
        pytest.param(
            {"instances": [1, {"a": 1}]}, LegacyFormat.INSTANCES, id="instances-first-not-object"
        ),
        pytest.param(
            {"instances": [{"a": 1, "b": [1, 2]}, {"b": [3], "a": 2}]},
            LegacyFormat.INSTANCES,
            id="rows",
        ),
        pytest.param(
            {"instances": [{"a": 1}, {"b": 2}]}, LegacyFormat.INSTANCES, id="rows-equal-counts"
        ),
        pytest.param({"instances": [{"a": None}]}, LegacyFormat.INSTANCES, id="rows-null"),
        pytest.param({"inputs": [[1, 2], [3]]}, LegacyFormat.INPUTS, id="inputs-ragged"),
        pytest.param(
            {"inputs": {"a": [[1, 2], [3, 4]], "b": [0.5, 1.5]}},
            LegacyFormat.INPUTS,
            id="inputs-named",
        ),
        pytest.param({"inputs": {}}, LegacyFormat.INPUTS, id="inputs-empty-object"),
        pytest.param(
            {"inputs": {"a": 5, "b": [1, 2]}}, LegacyFormat.INPUTS, id="inputs-first-scalar"
        ),
        pytest.param(
            {"inputs": {"a": [1], "b": "x", "c": [1, 2]}},
            LegacyFormat.INPUTS,
            id="inputs-scalar-stops-check",
        ),
        pytest.param({"inputs": 5}, LegacyFormat.INPUTS, id="inputs-scalar"),
        pytest.param({"inputs": None}, LegacyFormat.INPUTS, id="inputs-null"),
        pytest.param({"inputs": [[[1, 2], [3, 4]]]}, LegacyFormat.INPUTS, id="inputs-3d"),
    ],
)
def test_tensor_accepted(body: dict[str, Any], fmt: LegacyFormat) -> None:
    assert parse_request(JSON, json.dumps(body).encode()).format is fmt


# §4.1, §8.8: new-protocol bodies under plain JSON, opt-in per route.
@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"dataframe_split": {"columns": ["a"], "data": [[1]]}}, id="split"),
        pytest.param({"dataframe_records": [{"a": 1}]}, id="records"),
        pytest.param({"dataframe_split": {"data": []}, "params": {"k": 1}}, id="split-params"),
        pytest.param({"params": {}, "dataframe_records": []}, id="params-first"),
        pytest.param({"inputs": [[1]], "params": {"k": 1}}, id="inputs-params"),
        pytest.param({"instances": [[1]], "params": None}, id="instances-params"),
        pytest.param({"dataframe_split": "not checked"}, id="value-not-checked"),
    ],
)
def test_v2_envelope_accepted_when_configured(body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    req = parse_request(JSON, raw, accept_v2_bodies=True)
    assert (req.format, req.body) == (LegacyFormat.V2, raw)


@pytest.mark.parametrize(
    ("header", "body", "message"),
    [
        pytest.param(
            JSON, {"dataframe_split": {}, "dataframe_records": []}, E3_SPLIT, id="two-format-keys"
        ),
        pytest.param(JSON, {"dataframe_split": {}, "extra": 1}, E3_SPLIT, id="extra-key"),
        pytest.param(JSON, {"params": {}}, E3_SPLIT, id="params-only"),
        pytest.param(
            JSON, {"instances": [], "inputs": [], "params": {}}, E6B_KEYS, id="both-tensor-keys"
        ),
        pytest.param(
            JSON,
            {"instances": [], "params": {}, "signature_name": "x"},
            E6A_SIGNATURE_NAME,
            id="signature-name",
        ),
        pytest.param(SPLIT, {"dataframe_split": {"data": []}}, E3_SPLIT, id="not-under-format"),
    ],
)
def test_v2_envelope_rules_still_apply(header: str, body: dict[str, Any], message: str) -> None:
    _assert_bad_request(header, json.dumps(body).encode(), message, accept_v2_bodies=True)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"inputs": []}, False, id="inputs-alone-is-legacy"),
        pytest.param({"instances": []}, False, id="instances-alone-is-legacy"),
        pytest.param({}, False, id="empty"),
        pytest.param({"dataframe_records": []}, True, id="records"),
        pytest.param({"inputs": [], "params": {}}, True, id="inputs-params"),
    ],
)
def test_is_v2_envelope(body: dict[str, Any], expected: bool) -> None:
    assert is_v2_envelope(body) is expected


# §4.1 L-REC: pandas' DataFrame(dict) for an object of columns.
@pytest.mark.parametrize(
    ("columns", "rows"),
    [
        pytest.param({}, [], id="empty"),
        pytest.param({"a": [1, 2], "b": ["x", "y"]}, [[1, "x"], [2, "y"]], id="columns"),
        pytest.param({"a": [], "b": []}, [], id="zero-rows"),
        pytest.param({"a": [1, 2], "b": "k"}, [[1, "k"], [2, "k"]], id="scalar-broadcast"),
        pytest.param({"a": None, "b": [1]}, [[None, 1]], id="null-broadcast"),
        pytest.param({"a": [[1, 2]], "b": [3]}, [[[1, 2], 3]], id="list-cells"),
    ],
)
def test_columns_to_rows(columns: dict[str, Any], rows: list[list[Any]]) -> None:
    assert columns_to_rows(columns) == rows


# §2.4 / §4.1 csv_mode split: pd.read_csv defaults, one type per column.
@pytest.mark.parametrize(
    ("text", "columns", "rows"),
    [
        pytest.param("a,b\n1,2\n3,4\n", ["a", "b"], [[1, 2], [3, 4]], id="ints"),
        pytest.param(
            "a,b\r\n1,2.5\r\n3,4\r\n", ["a", "b"], [[1, 2.5], [3, 4.0]], id="crlf-int-float"
        ),
        pytest.param("a\n1\n\n2\n", ["a"], [[1], [2]], id="blank-lines-skipped"),
        pytest.param("a\n1\nNA\n", ["a"], [[1.0], [math.nan]], id="int-with-na-is-float"),
        pytest.param("a\n1e3\n-.5\ninf\n", ["a"], [[1000.0], [-0.5], [math.inf]], id="float-forms"),
        pytest.param("a\n 7 \n", ["a"], [[7]], id="int-spaces"),
        pytest.param("a\nTrue\nfalse\n", ["a"], [[True], [False]], id="bools"),
        pytest.param("a\nTrue\n\n", ["a"], [[True]], id="bool-blank-line"),
        pytest.param("a\nTRUE\nnull\n", ["a"], [[True], [math.nan]], id="bool-with-na"),
        pytest.param("a\n1\nx\n", ["a"], [["1"], ["x"]], id="mixed-is-string"),
        pytest.param("a\nx\nNaN\n", ["a"], [["x"], [math.nan]], id="string-with-na"),
        pytest.param("a\nNone\n", ["a"], [["None"]], id="none-is-a-string-in-pandas-1.5"),
        pytest.param("a,b\n,\n", ["a", "b"], [[math.nan, math.nan]], id="all-na"),
        pytest.param('a,b\n"x,y",1\n', ["a", "b"], [["x,y", 1]], id="quoted"),
        pytest.param(
            "a,b,c\n1\n", ["a", "b", "c"], [[1, math.nan, math.nan]], id="short-row-padded"
        ),
        pytest.param(
            "a,a,,a\n1,2,3,4\n", ["a", "a.1", "Unnamed: 2", "a.2"], [[1, 2, 3, 4]], id="names"
        ),
        pytest.param("a,b\n", ["a", "b"], [], id="header-only"),
        pytest.param("a\n1_000\n", ["a"], [["1_000"]], id="underscore-not-a-number"),
    ],
)
def test_read_csv(text: str, columns: list[str], rows: list[list[Any]]) -> None:
    got_columns, got_rows = read_csv(text)
    assert got_columns == columns
    # json.dumps writes NaN as a token, so NaN compares equal to NaN here.
    assert json.dumps(got_rows) == json.dumps(rows)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("\n\n", id="blank"),
        pytest.param("a\n1,2\n", id="row-longer-than-header"),
    ],
)
def test_read_csv_refused(text: str) -> None:
    with pytest.raises(BadRequest) as info:
        read_csv(text)
    assert info.value.message == E4_CSV


# §5.1: stdlib json.dump defaults; wrapper attr tested for truth as 1.30.1 did.
@pytest.mark.parametrize(
    ("predictions", "wrapper", "body"),
    [
        pytest.param([0, 1, 2], None, b"[0, 1, 2]", id="list"),
        pytest.param([[2.0, math.nan]], None, b"[[2.0, NaN]]", id="nan-token"),
        pytest.param([math.inf, -math.inf], None, b"[Infinity, -Infinity]", id="inf-tokens"),
        pytest.param(
            {"a": [1.0], "b": "\u00ed"}, None, b'{"a": [1.0], "b": "\\u00ed"}', id="ascii"
        ),
        pytest.param([0], "predictions", b'{"predictions": [0]}', id="wrapped"),
        pytest.param([0], "", b"[0]", id="empty-wrapper-is-none"),
    ],
)
def test_render_predictions(predictions: Any, wrapper: str | None, body: bytes) -> None:
    assert render_predictions(predictions, wrapper) == body
