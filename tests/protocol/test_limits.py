"""The work limits (`limits.max_columns`, `max_cells`, `max_depth`) on every legacy reader.

1.30.1 had none of them: each refusal is the proxy's own 400 in the 1.x shape (§6.5),
raised before any translation work, and a body of any depth is a 400, never a crash.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy import jsoncodec
from proxy.config.backends import DEPTH_CEILING
from proxy.errors import PROXY_STACK_TRACE, LimitExceeded, UpstreamProtocolError
from proxy.models import CsvMode, UpstreamNan
from proxy.protocol import v2
from proxy.protocol.csvframe import read_csv, read_csv_frame
from proxy.protocol.legacy import parse_request
from proxy.protocol.limits import WorkLimits, check_depth, check_rows
from proxy.protocol.translate import legacy_to_v2, v2_to_legacy

JSON = "application/json"
SPLIT = "application/json; format=pandas-split"
RECORDS = "application/json; format=pandas-records"
NUMPY = "application/json-numpy-split"
CSV = "text/csv"

PROPERTY = settings(max_examples=120, deadline=None)


def _nest(depth: int, inner: bytes = b"") -> bytes:
    """A list nested `depth` levels (`[]` is one), `inner` in the innermost."""
    return b"[" * depth + inner + b"]" * depth


# Each reader, with the body that nests a list `depth` levels deep in all (the reader's
# own objects count): (content type, body for depth, smallest depth, accept_v2_bodies).
DEPTH_CASES: dict[str, tuple[str, Callable[[int, bytes], bytes], int, bool]] = {
    "json-records": (JSON, lambda d, x: _nest(d, x), 1, False),
    "json-split": (JSON, lambda d, x: b'{"data": ' + _nest(d - 1, x) + b"}", 2, False),
    "pandas-split": (SPLIT, lambda d, x: b'{"data": ' + _nest(d - 1, x) + b"}", 2, False),
    "pandas-records": (RECORDS, lambda d, x: _nest(d, x), 1, False),
    "numpy-split": (
        NUMPY,
        lambda d, x: b'{"index": [], "columns": [], "data": ' + _nest(d - 1, x) + b"}",
        2,
        False,
    ),
    "instances": (JSON, lambda d, x: b'{"instances": ' + _nest(d - 1, x) + b"}", 2, False),
    "inputs": (JSON, lambda d, x: b'{"inputs": ' + _nest(d - 1, x) + b"}", 2, False),
    "v2-split": (
        JSON,
        lambda d, x: b'{"dataframe_split": {"data": ' + _nest(d - 2, x) + b"}}",
        3,
        True,
    ),
    "v2-inputs": (
        JSON,
        lambda d, x: b'{"inputs": ' + _nest(d - 1, x) + b', "params": {}}',
        2,
        True,
    ),
}


@PROPERTY
@given(
    reader=st.sampled_from(sorted(DEPTH_CASES)),
    depth=st.one_of(st.integers(1, 700), st.sampled_from([1023, 1024, 1025, 5000, 100_000])),
    max_depth=st.one_of(st.integers(2, 200), st.sampled_from([511, 512, 513, 5000])),
    inner=st.sampled_from([b"", b"NaN", b"1", b'"[[["', b"123456789012345678901234"]),
)
@example(reader="json-records", depth=100_000, max_depth=100, inner=b"")
@example(reader="json-records", depth=1000, max_depth=5000, inner=b"NaN")
@example(reader="json-records", depth=100, max_depth=100, inner=b"NaN")
def test_depth_is_a_400_at_any_nesting(
    reader: str, depth: int, max_depth: int, inner: bytes
) -> None:
    content_type, build, smallest, accept_v2 = DEPTH_CASES[reader]
    depth = max(depth, smallest)
    limits = WorkLimits(max_depth=max_depth)
    body = build(depth, inner)
    if depth > min(max_depth, DEPTH_CEILING):
        with pytest.raises(LimitExceeded) as info:
            parse_request(content_type, body, accept_v2_bodies=accept_v2, limits=limits)
        assert info.value.key == "max_depth"
        assert info.value.limit == min(max_depth, DEPTH_CEILING)
        return
    # Accepted, and translated without a RecursionError on every path that re-serialises.
    req = parse_request(content_type, body, accept_v2_bodies=accept_v2, limits=limits)
    for upstream_nan in UpstreamNan:
        out = legacy_to_v2(req, upstream_nan=upstream_nan)
        assert out.content_type == v2.CONTENT_TYPE_JSON


def _split(columns: int, rows: int) -> bytes:
    names = [f"c{i}" for i in range(columns)]
    return json.dumps({"columns": names, "data": [[1] * columns] * rows}).encode()


def _ragged(columns: int, rows: int) -> bytes:
    # No `columns`: the widest row sets the width, and pandas pads the others.
    data = [[1] * columns] + [[1] * min(columns, 1)] * (rows - 1) if rows else []
    return json.dumps({"data": data}).encode()


def _records(columns: int, rows: int) -> bytes:
    # Rows with keys of their own, or one row with them all: the width is their union.
    if columns <= rows:
        data = [{f"c{i % columns}": 1} if columns else {} for i in range(rows)]
    else:
        data = [{f"c{i}": 1 for i in range(columns)}] + [{}] * (rows - 1) if rows else []
    return json.dumps(data).encode()


def _columns_object(columns: int, rows: int) -> bytes:
    # One list column, the others scalars broadcast to its length (§4.1 L-REC).
    doc: dict[str, Any] = {f"c{i}": "x" for i in range(1, columns)}
    if columns:
        doc["c0"] = [1] * rows
    return json.dumps(doc).encode()


def _csv(columns: int, rows: int) -> bytes:
    # Short rows are padded to the header's width (§2.4); a blank line is no row.
    header = ",".join(f"c{i}" for i in range(columns))
    return (header + "\n" + "1\n\n" * rows).encode()


def _instances(columns: int, rows: int) -> bytes:
    return json.dumps({"instances": [{f"c{i}": 1 for i in range(columns)}] * rows}).encode()


def _inputs(columns: int, rows: int) -> bytes:
    return json.dumps({"inputs": {f"c{i}": [1] * rows for i in range(columns)}}).encode()


def _v2_records(columns: int, rows: int) -> bytes:
    return b'{"dataframe_records": ' + _records(columns, rows) + b"}"


def _v2_instances(columns: int, rows: int) -> bytes:
    row = [1] * columns
    return json.dumps({"instances": [row] * rows, "params": {}}).encode()


# Each reader and a body describing a frame of `columns` × `rows` (as pandas lays it out),
# whether the width is still seen with no rows, and accept_v2_bodies.
FRAME_CASES: dict[str, tuple[str, Callable[[int, int], bytes], bool, bool]] = {
    "json-split": (JSON, _split, True, False),
    "pandas-split": (SPLIT, _split, True, False),
    "numpy-split": (NUMPY, lambda c, r: _split(c, r)[:-1] + b', "index": []}', True, False),
    "split-ragged-rows": (SPLIT, _ragged, False, False),
    "json-records": (JSON, _records, False, False),
    "pandas-records": (RECORDS, _records, False, False),
    "records-of-columns": (RECORDS, _columns_object, True, False),
    "csv": (CSV, _csv, True, False),
    "instances": (JSON, _instances, False, False),
    "inputs": (JSON, _inputs, True, False),
    "v2-split": (JSON, lambda c, r: b'{"dataframe_split": ' + _split(c, r) + b"}", True, True),
    "v2-records": (JSON, _v2_records, False, True),
    "v2-instances": (JSON, _v2_instances, False, True),
}


@PROPERTY
@given(
    reader=st.sampled_from(sorted(FRAME_CASES)),
    columns=st.integers(0, 30),
    rows=st.integers(0, 30),
    max_columns=st.integers(1, 30),
    max_cells=st.integers(1, 400),
    csv_mode=st.sampled_from(CsvMode),
)
def test_columns_and_cells_are_refused_before_translation(
    reader: str,
    columns: int,
    rows: int,
    max_columns: int,
    max_cells: int,
    csv_mode: CsvMode,
) -> None:
    content_type, build, width_without_rows, accept_v2 = FRAME_CASES[reader]
    if content_type == CSV:
        columns = max(columns, 1)  # a header has at least one name
    width = columns if rows or width_without_rows else 0
    limits = WorkLimits(max_columns=max_columns, max_cells=max_cells)
    body = build(columns, rows)
    expected = (
        "max_columns" if width > max_columns else "max_cells" if width * rows > max_cells else None
    )
    if expected is None:
        req = parse_request(content_type, body, accept_v2_bodies=accept_v2, limits=limits)
        legacy_to_v2(req, csv_mode=csv_mode)
        return
    with pytest.raises(LimitExceeded) as info:
        parse_request(content_type, body, accept_v2_bodies=accept_v2, limits=limits)
    assert info.value.key == expected


@PROPERTY
@given(
    reader=st.sampled_from(sorted(FRAME_CASES)),
    columns=st.integers(0, 40),
    rows=st.integers(0, 40),
)
def test_a_body_is_larger_than_any_frame_it_can_describe(
    reader: str, columns: int, rows: int
) -> None:
    # `bounds_frame_of` skips measuring a small body's frame: sound only if n bytes never
    # describe more than n columns or n × n cells (n + 1 for CSV, whose cells may be empty).
    content_type, build, width_without_rows, _ = FRAME_CASES[reader]
    if content_type == CSV:
        columns = max(columns, 1)
    body = build(columns, rows)
    size = len(body) + (1 if content_type == CSV else 0)
    width = columns if rows or width_without_rows else 0
    tight = WorkLimits(max_columns=size, max_cells=size * size)
    assert tight.bounds_frame_of(size)
    assert width <= size
    assert width * rows <= size * size
    assert not WorkLimits(max_columns=size - 1).bounds_frame_of(size)
    assert not WorkLimits(max_cells=size * size - 1).bounds_frame_of(size)


@pytest.mark.parametrize("reader", sorted(FRAME_CASES))
def test_every_reader_measures_a_frame_just_over_and_just_within(reader: str) -> None:
    # Deterministic beside the property above: each reader's frame path is taken.
    content_type, build, _, accept_v2 = FRAME_CASES[reader]
    body = build(3, 3)
    for limits, refused in (
        (WorkLimits(max_columns=2), "max_columns"),
        (WorkLimits(max_cells=8), "max_cells"),
        (WorkLimits(max_columns=3, max_cells=9), None),
    ):
        assert not limits.bounds_frame_of(len(body))
        if refused is None:
            parse_request(content_type, body, accept_v2_bodies=accept_v2, limits=limits)
            continue
        with pytest.raises(LimitExceeded) as info:
            parse_request(content_type, body, accept_v2_bodies=accept_v2, limits=limits)
        assert info.value.key == refused


def test_a_scalar_where_a_frame_may_stand_is_no_frame() -> None:
    # Measured (the limits are below the body's size), and nothing to count.
    body = b'{"instances": "a b c"}'
    req = parse_request(JSON, body, limits=WorkLimits(max_columns=1, max_cells=1))
    assert req.payload == {"instances": "a b c"}


@pytest.mark.parametrize(
    ("limits", "content_type", "body", "message"),
    [
        pytest.param(
            WorkLimits(max_depth=100),
            JSON,
            _nest(100_000),
            "Request body has more than 100 levels of nesting; the limit is 100 "
            "(limits.max_depth).",
            id="depth",
        ),
        pytest.param(
            WorkLimits(max_columns=2),
            SPLIT,
            _split(3, 1),
            "Request body has 3 columns; the limit is 2 (limits.max_columns).",
            id="columns",
        ),
        pytest.param(
            WorkLimits(max_cells=10),
            CSV,
            _csv(4, 3),
            "Request body has 12 cells (3 rows of 4); the limit is 10 (limits.max_cells).",
            id="cells",
        ),
    ],
)
def test_a_limit_answers_a_1x_400_naming_it(
    limits: WorkLimits, content_type: str, body: bytes, message: str
) -> None:
    with pytest.raises(LimitExceeded) as info:
        parse_request(content_type, body, limits=limits)
    reply = info.value.to_reply()
    assert (reply.status, reply.content_type) == (400, "application/json")
    assert json.loads(reply.body) == {
        "error_code": "BAD_REQUEST",
        "message": message,
        "stack_trace": PROXY_STACK_TRACE,
    }


def test_the_default_limits_are_the_configs() -> None:
    assert WorkLimits() == WorkLimits(max_columns=16_384, max_cells=10_000_000, max_depth=100)
    with pytest.raises(LimitExceeded):
        parse_request(SPLIT, _split(16_385, 0))
    parse_request(SPLIT, _split(16_384, 1))


def test_mixed_rows_count_their_widest_row_and_keys() -> None:
    # pandas refuses such a frame; the limit still counts it generously, never less.
    with pytest.raises(LimitExceeded):
        check_rows([{"a": 1, "b": 2, "c": 3}, [1, 2], 7], WorkLimits(max_columns=2))
    with pytest.raises(LimitExceeded):
        check_rows([[1, 2, 3], 7], WorkLimits(max_columns=2))
    check_rows([1, 2, 3], WorkLimits(max_columns=1))


@pytest.mark.parametrize("csv_mode", list(CsvMode))
def test_a_csv_field_beyond_the_csv_modules_default_limit_is_read(csv_mode: CsvMode) -> None:
    text = "a,b\n" + "x" * (300 * 1024) + ",1\n"  # the csv module stopped at 128 KiB
    req = parse_request(CSV, text.encode())
    out = legacy_to_v2(req, csv_mode=csv_mode)
    if csv_mode is CsvMode.SPLIT:
        frame = json.loads(out.body)["dataframe_split"]
        assert frame["columns"] == ["a", "b"]
        assert frame["data"][0][0] == text[4:-3]


@pytest.mark.parametrize("depth", [DEPTH_CEILING + 1, 900, 1000, 1025, 100_000])
def test_a_reply_too_deep_to_render_is_an_upstream_protocol_error(depth: int) -> None:
    body = b'{"predictions": ' + _nest(depth - 1) + b"}"
    with pytest.raises(UpstreamProtocolError):
        v2_to_legacy(200, "application/json", body)
    long_integer = b'{"predictions": ' + _nest(depth - 1, b"123456789012345678901234") + b"}"
    with pytest.raises(UpstreamProtocolError):
        v2.read_predictions(long_integer)


def test_a_reply_as_deep_as_the_ceiling_is_rendered() -> None:
    body = b'{"predictions": ' + _nest(DEPTH_CEILING - 1, b"NaN") + b"}"
    assert v2_to_legacy(200, "application/json", body).body == _nest(DEPTH_CEILING - 1, b"NaN")


cells = st.one_of(
    st.sampled_from(["", "NA", "nan", "null", "inf", "-Infinity", "1e999", "True", "false"]),
    st.from_regex(r"[ \t]?[+-]?[0-9]{1,3}(\.[0-9]{0,2})?[ \t]?", fullmatch=True),
    st.text(alphabet='ab,"\n ', max_size=4),
)


@PROPERTY
@given(
    width=st.integers(1, 4),
    rows=st.lists(st.lists(cells, max_size=4), max_size=8),
    many=st.booleans(),
)
def test_csv_columns_encode_as_the_whole_frame_would(
    width: int, rows: list[list[str]], many: bool
) -> None:
    # The column-wise reader and the chunked writer give the bytes of `json.dumps` of the
    # row-wise frame, NaN kept or nulled as `nan_to_null` would; `many` crosses chunks.
    rows = [row[:width] for row in rows] * (1500 if many else 1)
    lines = [",".join(f"c{i}" for i in range(width))]
    lines += [",".join(_quoted(cell) for cell in row) for row in rows]
    text = "\n".join(lines) + "\n"
    names, data = read_csv(text)
    frame = {v2.DATAFRAME_SPLIT: {"columns": names, "data": data}}
    for nulls in (False, True):
        expected = v2.encode(jsoncodec.nan_to_null(frame) if nulls else frame)
        assert v2.encode_split_rows(*read_csv_frame(text, nulls=nulls)) == expected


def _quoted(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"' if any(c in cell for c in ',"\n') else cell


def test_nulls_cover_non_finite_floats() -> None:
    _, chunks = read_csv_frame("a,b\n1e999,x\nNA,\n2.5,y\n", nulls=True)
    assert list(chunks) == [[(None, "x"), (None, None), (2.5, "y")]]
    _, rows = read_csv("a\n1e999\n")
    assert math.isinf(rows[0][0])


def test_a_column_has_one_type_across_chunks() -> None:
    # The first chunk alone reads as ints, the last as floats: pandas types the column.
    text = "a,b\n" + "1,x\n" * 3000 + "2.5,NA\n"
    _, rows = read_csv(text)
    assert rows[0] == [1.0, "x"]
    assert isinstance(rows[0][0], float)
    assert math.isnan(rows[-1][1])


@pytest.mark.parametrize("length", [2048, 2049, 5000])
def test_a_long_list_of_predictions_renders_as_json_dumps_would(length: int) -> None:
    # Written a chunk at a time, the bytes of one `json.dumps` call (§5.3 step 1).
    predictions = [[i, i / 3, "x", None, math.nan] for i in range(length)]
    body = v2.encode({"predictions": predictions})
    assert v2_to_legacy(200, "application/json", body).body == json.dumps(predictions).encode()


@pytest.mark.parametrize(
    ("value", "deepest"),
    [
        pytest.param(3.5, 0, id="scalar"),
        pytest.param("[[[", 0, id="a-string-is-no-container"),
        pytest.param([], 1, id="empty-list"),
        pytest.param({"a": [1, {"b": []}]}, 4, id="mixed"),
        pytest.param([[1, 2], [3, [4]]], 3, id="ragged-rows"),
        pytest.param([{"a": {"b": 1}}, {"c": 2}], 3, id="records"),
    ],
)
@pytest.mark.parametrize("with_brackets", [False, True], ids=["walk", "bounded"])
def test_check_depth_refuses_exactly_past_the_limit(
    value: Any, deepest: int, with_brackets: bool
) -> None:
    text = json.dumps(value).encode()
    brackets = text.count(b"[") + text.count(b"{") if with_brackets else None
    check_depth(value, WorkLimits(max_depth=max(deepest, 1)), brackets)
    if deepest > 1:
        with pytest.raises(LimitExceeded):
            check_depth(value, WorkLimits(max_depth=deepest - 1), brackets)
