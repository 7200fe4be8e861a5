"""The pure half of `verify`: judging one answer, counting, the table and the report."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from proxy.cli.parity import (
    failed,
    format_summary,
    format_table,
    judge,
    report,
    summarize,
)
from proxy.compare import Tolerance
from proxy.models import Reply
from proxy.telemetry.recorder import Pair, RecordedAnswer


def pair(status: int = 200, body: bytes = b"[0, 1]", pair_id: str = "iris/x") -> Pair:
    return Pair(
        7,
        pair_id,
        "iris",
        "1",
        "/model/iris/1/invocations",
        "application/json",
        b"[[1]]",
        RecordedAnswer(status, "application/json", body),
    )


def test_equal_bytes_and_equal_json_are_equal() -> None:
    assert judge(pair(), Reply(200, b"[0, 1]"), Tolerance()).result == "equal"
    assert judge(pair(), Reply(200, b"[0,1]"), Tolerance()).result == "equal"


def test_a_pass_through_answer_is_compared_without_its_content_encoding() -> None:
    reply = Reply(200, gzip.compress(b"[0, 1]"), None, (("content-encoding", "gzip"),))
    assert judge(pair(), reply, Tolerance()).result == "equal"


def test_a_shape_difference_names_its_path_and_why() -> None:
    row = judge(pair(), Reply(200, b"[0, 1, 2]"), Tolerance())
    assert (row.result, row.path, row.detail) == ("differs", "$", "list lengths differ")
    assert row.describe() == "$: 'list[2]' recorded, 'list[3]' translated (list lengths differ)"


def test_an_unavailable_endpoint_is_an_error_unless_the_legacy_side_said_the_same() -> None:
    row = judge(pair(), Reply(429, b"{}"), Tolerance())
    assert (row.result, row.describe()) == ("error", "the endpoint answered 429")
    assert judge(pair(status=503), Reply(503, b"{}"), Tolerance()).result == "equal"
    # Any other status is the translation's answer, and a difference.
    assert judge(pair(), Reply(400, b"{}"), Tolerance()).result == "differs"


def test_the_summary_counts_each_result_and_the_share_equal() -> None:
    rows = [
        judge(pair(), Reply(200, b"[0, 1]"), Tolerance()),
        judge(pair(), Reply(200, b"[0, 2]"), Tolerance()),
        failed(pair(), "UF 503: Model endpoint is unavailable."),
        judge(pair(), Reply(200, b"[0, 1]"), Tolerance()),
    ]
    summary = summarize(rows, 0.5, other_models=3, unanswered=1)
    assert (summary.total, summary.equal, summary.differs, summary.error) == (4, 2, 1, 1)
    assert (summary.parity, summary.passed) == (0.5, True)
    assert not summarize(rows, 0.75, 0, 0).passed
    assert format_summary(summary) == (
        "summary: 2 equal, 1 differs, 1 error of 4 pairs; parity 0.5000 (min 0.5000): ok"
    )
    doc = json.loads(json.dumps(report("iris", Path("p.jsonl"), rows, summary)))
    assert [row["result"] for row in doc["rows"]] == ["equal", "differs", "error", "equal"]
    assert doc["summary"]["passed"] is True
    assert doc["summary"]["other_models"] == 3


def test_no_rows_is_full_parity() -> None:
    assert summarize([], 1.0, 0, 0).parity == 1.0


def test_the_table_has_one_line_per_pair_long_ids_cut() -> None:
    rows = [
        judge(pair(pair_id="a" * 80), Reply(200, b"[0, 1]"), Tolerance()),
        failed(pair(), "no answer within 60 s"),
    ]
    lines = list(format_table(rows))
    assert len(lines) == 4
    assert lines[2].split() == ["7", "a" * 35 + "…", "equal"]
    assert lines[3].split(None, 3) == ["7", "iris/x", "error", "no answer within 60 s"]
