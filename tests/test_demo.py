"""The demo: its comparison rules as a table, and one whole run against the real processes."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest

from proxy.demo import (
    DEFAULT_CORPUS,
    Answer,
    json_equal,
    legacy_path,
    load_cases,
    proxy_config,
    run_demo,
    same_answer,
)

JSON = "application/json"
HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
ERROR_400 = b'{"error_code": "BAD_REQUEST", "message": "a", "stack_trace": "t"}'
needs_corpus = pytest.mark.skipif(
    not (DEFAULT_CORPUS / "cases").is_dir(), reason=f"no corpus at {DEFAULT_CORPUS}"
)


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
        pytest.param(Answer(200, JSON, b"[0, 1]"), Answer(200, JSON, b"[0,1]"), True, id="json"),
        pytest.param(Answer(200, JSON, b"[NaN]"), Answer(200, JSON, b"[NaN]"), True, id="bare-nan"),
        pytest.param(Answer(200, JSON, b"[0, 1]"), Answer(200, JSON, b"[1, 0]"), False, id="body"),
        pytest.param(Answer(200, JSON, b"[0]"), Answer(400, JSON, b"[0]"), False, id="status"),
        pytest.param(Answer(200, JSON, b"[0]"), Answer(200, JSON, b"<html>"), False, id="not-json"),
        pytest.param(
            Answer(400, JSON, ERROR_400),
            Answer(400, JSON, b'{"error_code": "BAD_REQUEST", "message": "other words"}'),
            True,
            id="error-code-not-message",
        ),
        pytest.param(
            Answer(400, JSON, ERROR_400),
            Answer(400, JSON, b'{"error_code": "INVALID_PARAMETER_VALUE", "message": "a"}'),
            False,
            id="error-code-differs",
        ),
        pytest.param(
            Answer(400, JSON, ERROR_400), Answer(400, JSON, b"[]"), False, id="error-not-object"
        ),
        pytest.param(
            Answer(415, TEXT, b"one text"), Answer(415, "text/plain", b"other"), True, id="text"
        ),
        pytest.param(
            Answer(404, HTML, b"<!doctype html>"), Answer(404, JSON, b"{}"), False, id="media"
        ),
        pytest.param(
            Answer(200, JSON, b"1.30.1"), Answer(200, JSON, b"1.30.1"), True, id="bad-json-200"
        ),
    ],
)
def test_same_answer_follows_the_corpus_rules(expected: Answer, got: Answer, equal: bool) -> None:
    verdict, why = same_answer(expected, got)
    assert verdict is equal
    assert (why == "") is equal


@needs_corpus
def test_every_case_has_a_legacy_url() -> None:
    cases = load_cases(DEFAULT_CORPUS)
    assert cases
    paths = {case.id: legacy_path(case) for case in cases}
    assert paths["iris/pandas-split"] == "/model/iris/1/invocations"
    assert paths["iris/ping"] == "/ping"
    assert all(case.model in proxy_config(1, 2, 3)["models"] for case in cases)


@pytest.mark.integration
@needs_corpus
def test_demo_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    code = run_demo(["--tries", "1", "--start-timeout", "60"])
    out = capsys.readouterr().out
    summary = re.search(r"^summary: (\d+) of (\d+) equal", out, re.MULTILINE)
    assert summary is not None, out
    assert summary[1] == summary[2], out
    assert code == 0, out
    # every child it started is gone: stopped and reaped, by PID
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", out)]
    assert len(pids) == 3
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_demo_refuses_an_empty_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cases").mkdir()
    assert run_demo(["--corpus", str(tmp_path)]) == 2
    assert "no corpus cases" in capsys.readouterr().err


def test_demo_strips_the_separator_argparse_keeps(tmp_path: Path) -> None:
    # `python -m proxy demo -- --corpus X` reaches run_demo as ["--", "--corpus", X]
    (tmp_path / "cases").mkdir()
    assert run_demo(["--", "--corpus", str(tmp_path)]) == 2
