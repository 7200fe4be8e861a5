"""Properties of the translation over generated frames and arbitrary input (architecture §1.5).

Frames mix floats (NaN, ±Infinity), ints (beyond 64 bits too), null, booleans and unicode
strings, from zero columns and rows up to many columns. Failures hypothesis found are pinned
with `@example`.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy import jsoncodec
from proxy.errors import ProxyError
from proxy.models import CsvMode, LegacyFormat, UpstreamNan
from proxy.protocol.legacy import parse_request
from proxy.protocol.translate import legacy_to_v2, v2_to_legacy

JSON = "application/json"
SPLIT = "application/json; format=pandas-split"
RECORDS = "application/json; format=pandas-records"
NUMPY = "application/json-numpy-split"

PROPERTY = settings(max_examples=150, deadline=None)

cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.none(),
    st.booleans(),
    st.text(max_size=6),
)
names = st.text(max_size=8)


@st.composite
def frames(draw: st.DrawFn) -> tuple[list[str], list[list[Any]]]:
    """Columns (unique, possibly none or many) and rows of matching width."""
    columns = draw(st.lists(names, unique=True, max_size=draw(st.sampled_from([3, 40]))))
    rows = draw(st.lists(st.lists(cells, min_size=len(columns), max_size=len(columns)), max_size=5))
    return columns, rows


def _same(a: Any, b: Any) -> bool:
    # json.dumps is order- and type-sensitive (1 vs 1.0, key order) and writes NaN as a token.
    return json.dumps(a) == json.dumps(b)


def _expected(envelope: dict[str, Any], upstream_nan: UpstreamNan) -> dict[str, Any]:
    if upstream_nan is UpstreamNan.NULL:
        result: dict[str, Any] = jsoncodec.nan_to_null(envelope)
        return result
    return envelope


@PROPERTY
@given(
    frame=frames(),
    header=st.sampled_from([JSON, SPLIT, NUMPY]),
    with_index=st.booleans(),
    with_data=st.booleans(),
    upstream_nan=st.sampled_from(UpstreamNan),
)
@example(
    frame=(["a"], [[123456789012345678901234567890]]),
    header=SPLIT,
    with_index=True,
    with_data=False,
    upstream_nan=UpstreamNan.NULL,
)
def test_split_frames_become_dataframe_split(
    frame: tuple[list[str], list[list[Any]]],
    header: str,
    with_index: bool,
    with_data: bool,
    upstream_nan: UpstreamNan,
) -> None:
    columns, rows = frame
    split: dict[str, Any] = {"columns": columns}
    if with_index or header == NUMPY:
        split["index"] = list(range(len(rows)))
    if with_data or header == NUMPY:
        split["data"] = rows
    body = json.dumps(split).encode()
    out = legacy_to_v2(parse_request(header, body), upstream_nan=upstream_nan)
    assert out.content_type == JSON
    want = {"dataframe_split": split if "data" in split else {**split, "data": []}}
    assert _same(jsoncodec.loads_exact(out.body), _expected(want, upstream_nan))


@PROPERTY
@given(
    frame=frames(),
    header=st.sampled_from([JSON, RECORDS]),
    upstream_nan=st.sampled_from(UpstreamNan),
)
def test_record_frames_become_dataframe_records(
    frame: tuple[list[str], list[list[Any]]], header: str, upstream_nan: UpstreamNan
) -> None:
    columns, rows = frame
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    out = legacy_to_v2(
        parse_request(header, json.dumps(records).encode()), upstream_nan=upstream_nan
    )
    want = {"dataframe_records": records}
    assert _same(jsoncodec.loads_exact(out.body), _expected(want, upstream_nan))


@PROPERTY
@given(frame=frames(), upstream_nan=st.sampled_from(UpstreamNan))
def test_record_columns_become_dataframe_split(
    frame: tuple[list[str], list[list[Any]]], upstream_nan: UpstreamNan
) -> None:
    columns, rows = frame
    by_column = {name: [row[i] for row in rows] for i, name in enumerate(columns)}
    out = legacy_to_v2(
        parse_request(RECORDS, json.dumps(by_column).encode()), upstream_nan=upstream_nan
    )
    data = rows if columns else []
    want = {"dataframe_split": {"columns": columns, "data": data}}
    assert _same(jsoncodec.loads_exact(out.body), _expected(want, upstream_nan))


json_values = st.recursive(
    cells,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(names, children, max_size=4),
    max_leaves=25,
)


@PROPERTY
@given(
    predictions=json_values,
    compact=st.booleans(),
    extra=st.dictionaries(names.filter(lambda key: key != "predictions"), cells, max_size=2),
    wrapper=st.sampled_from([None, "", "result"]),
)
@example(predictions=[10**20], compact=False, extra={}, wrapper=None)
@example(predictions=-(2**64), compact=True, extra={}, wrapper=None)
def test_predictions_render_as_stdlib_json(
    predictions: Any, compact: bool, extra: dict[str, Any], wrapper: str | None
) -> None:
    reply_obj = {**extra, "predictions": predictions}
    if compact:
        body = json.dumps(reply_obj, separators=(",", ":"), ensure_ascii=False).encode()
    else:
        body = json.dumps(reply_obj).encode()
    reply = v2_to_legacy(200, JSON, body, wrapper_attr=wrapper)
    expected = {wrapper: predictions} if wrapper else predictions
    assert (reply.status, reply.content_type) == (200, JSON)
    assert reply.body == json.dumps(expected).encode()


content_types = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.builds(
        lambda mime, params, space: (";" + space).join([mime, *params]),
        st.sampled_from(
            ["application/json", "text/csv", NUMPY, "text/plain", "", "Application/JSON"]
        ),
        st.lists(
            st.sampled_from(
                [
                    "format=pandas-split",
                    "format=pandas-records",
                    "format=",
                    "format",
                    "charset=utf-8",
                    "charset=UTF-8",
                    "charset=latin-1",
                    "Charset=x",
                    "FORMAT=pandas-split",
                    "foo=bar",
                ]
            ),
            max_size=3,
        ),
        st.sampled_from(["", " ", "  \t"]),
    ),
)
tensor_keys = st.sampled_from(
    [
        "instances",
        "inputs",
        "columns",
        "data",
        "index",
        "signature_name",
        "params",
        "dataframe_split",
        "dataframe_records",
    ]
)
bodies = st.one_of(
    st.binary(max_size=60),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(tensor_keys, json_values, max_size=3).map(lambda d: json.dumps(d).encode()),
)


@PROPERTY
@given(
    header=content_types,
    body=bodies,
    accept_v2_bodies=st.booleans(),
    csv_mode=st.sampled_from(CsvMode),
    upstream_nan=st.sampled_from(UpstreamNan),
)
@example(
    header=JSON,
    body=b"[" * 3000,
    accept_v2_bodies=False,
    csv_mode=CsvMode.PASSTHROUGH,
    upstream_nan=UpstreamNan.KEEP,
)
@example(
    header="text/csv",
    body=b"a\n1,2\n",
    accept_v2_bodies=False,
    csv_mode=CsvMode.SPLIT,
    upstream_nan=UpstreamNan.KEEP,
)
def test_arbitrary_requests_only_raise_proxy_errors(
    header: str | None,
    body: bytes,
    accept_v2_bodies: bool,
    csv_mode: CsvMode,
    upstream_nan: UpstreamNan,
) -> None:
    try:
        req = parse_request(header, body, accept_v2_bodies=accept_v2_bodies)
        out = legacy_to_v2(req, csv_mode=csv_mode, upstream_nan=upstream_nan)
    except ProxyError as err:
        err.to_reply()
        return
    if out.content_type == JSON:
        # Whatever is forwarded is JSON the new side's stdlib parser reads.
        json.loads(out.body)
    else:
        assert (req.format, out.body) == (LegacyFormat.CSV, body)


@PROPERTY
@given(status=st.integers(100, 599), body=bodies)
@example(status=400, body=b'{"message": "Failed to predict data"}')
def test_arbitrary_replies_only_raise_proxy_errors(status: int, body: bytes) -> None:
    try:
        reply = v2_to_legacy(status, JSON, body)
    except ProxyError as err:
        reply = err.to_reply()
    if reply.status != 200:
        error = json.loads(reply.body)
        assert list(error)[:2] == ["error_code", "message"]
        assert set(error) <= {"error_code", "message", "stack_trace"}
