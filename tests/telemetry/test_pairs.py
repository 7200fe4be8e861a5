"""Pairs: a payload line with the legacy side's answer, written by the recorder and the
corpus converter, read by `verify` (and still a payload line for the load tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtests import mix
from proxy.config.telemetry import RecordingConfig
from proxy.telemetry.recorder import (
    Pair,
    PayloadError,
    RecordedAnswer,
    pair_line,
    read_pairs,
    record_sample,
    sample_line,
)

SPLIT = b'{"columns": ["a"], "data": [[NaN]]}'
CT = "application/json; format=pandas-split"
OK = RecordedAnswer(200, "application/json", b"[0]")


def line(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": "x",
        "model": "iris",
        "version": "3",
        "legacy": {"content_type": CT, "body": SPLIT.decode()},
        "answer": {"status": 200, "content_type": "application/json", "body": "[0]"},
    }
    obj.update(changes)
    return obj


def write(path: Path, *objs: Any) -> Path:
    path.write_text("".join(json.dumps(obj) + "\n" for obj in objs))
    return path


def test_a_recorded_answer_reads_back_exactly_binary_bodies_included(tmp_path: Path) -> None:
    gzipped_looking = RecordedAnswer(500, None, b"\xff\x00 not text")
    target = tmp_path / "pairs.jsonl"
    target.write_bytes(
        sample_line(
            model="iris",
            version="3",
            path="/model/iris/Production/invocations",
            content_type=CT,
            body=SPLIT,
            answer=gzipped_looking,
            request_id="req-1",
            now=0.0,
        )
        + pair_line(
            line_id="iris/pandas-split",
            model="iris",
            version="1",
            path="/model/iris/1/invocations",
            content_type=None,
            body=b"",
            answer=OK,
        )
    )
    raw = [json.loads(text) for text in target.read_text().splitlines()]
    assert "body_b64" in raw[0]["answer"]
    assert "recorded_at" not in raw[1]
    pairs = read_pairs(target).pairs
    assert pairs == (
        Pair(
            1,
            "recorded/iris/3",
            "iris",
            "3",
            "/model/iris/Production/invocations",
            CT,
            SPLIT,
            gzipped_looking,
            "req-1",
        ),
        Pair(2, "iris/pandas-split", "iris", "1", "/model/iris/1/invocations", None, b"", OK),
    )


def test_samples_without_an_answer_are_counted_not_read_as_pairs(tmp_path: Path) -> None:
    sample = {k: v for k, v in line().items() if k != "answer"}
    path = write(tmp_path / "mixed.jsonl", sample, line(), sample)
    path.write_text(path.read_text() + "\n   \n")  # blank lines are ignored
    pairs = read_pairs(path)
    assert (len(pairs.pairs), pairs.unanswered) == (1, 2)
    assert pairs.pairs[0].line == 2


def test_a_pair_file_is_still_a_payload_file_for_the_load_tests(tmp_path: Path) -> None:
    path = write(tmp_path / "pairs.jsonl", line(), line(version=4))
    assert [(p.content_type, p.body) for p in mix.load(path, "legacy")] == [(CT, SPLIT)] * 2
    assert read_pairs(path).pairs[1].version == "4"


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        pytest.param(line(answer={"status": "200", "body": ""}), "status must be", id="status"),
        pytest.param(line(answer={"status": True, "body": ""}), "status must be", id="bool"),
        pytest.param(line(answer={"status": 99, "body": ""}), "status must be", id="range"),
        pytest.param(line(answer={"status": 200}), "needs body or body_b64", id="no-body"),
        pytest.param(line(answer={"status": 200, "body_b64": "!!"}), "not base64", id="bad-base64"),
        pytest.param(line(answer=[200]), "must be an object", id="answer-list"),
        pytest.param(line(model=""), "model must be", id="no-model"),
        pytest.param(line(version=None), "version must be", id="no-version"),
        pytest.param(line(path=3), "path must be", id="path"),
        pytest.param(line(request_id=3), "request_id must be", id="request-id"),
        pytest.param(
            {**line(serverless=line()["legacy"]), "legacy": None},
            "must be an object",
            id="null-legacy",
        ),
        pytest.param(
            {k: v for k, v in line(serverless=line()["legacy"]).items() if k != "legacy"},
            "needs a 'legacy' side",
            id="serverless-only",
        ),
        pytest.param([1], "must be a JSON object", id="not-an-object"),
    ],
)
def test_a_malformed_pair_names_its_line_and_key(obj: Any, message: str, tmp_path: Path) -> None:
    path = write(tmp_path / "bad.jsonl", line(), obj)
    with pytest.raises(PayloadError, match=message) as error:
        read_pairs(path)
    assert f"{path}:2" in str(error.value)


def test_an_unreadable_or_non_json_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PayloadError, match="cannot read"):
        read_pairs(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b"\xff\n")
    with pytest.raises(PayloadError, match="not UTF-8"):
        read_pairs(tmp_path / "latin1.jsonl")
    (tmp_path / "text.jsonl").write_text("hello\n")
    with pytest.raises(PayloadError, match=r"text\.jsonl:1: not JSON"):
        read_pairs(tmp_path / "text.jsonl")


def test_the_answer_is_built_only_for_a_sampled_request(tmp_path: Path) -> None:
    config = RecordingConfig(
        enabled=True, path=tmp_path / "rec.jsonl", sample_rate=0.5, answers=True
    )
    built: list[int] = []

    def answer() -> RecordedAnswer:
        built.append(1)
        return OK

    request: dict[str, Any] = {
        "model": "iris",
        "version": "1",
        "path": "/model/iris/1/invocations",
        "content_type": CT,
        "body": SPLIT,
        "answer": answer,
    }
    assert record_sample(config, draw=lambda: 0.7, **request) is False
    assert built == []
    assert record_sample(config, draw=lambda: 0.1, request_id="r", **request) is True
    assert built == [1]
    (pair,) = read_pairs(tmp_path / "rec.jsonl").pairs
    assert (pair.answer, pair.request_id) == (OK, "r")


def test_pairs_stop_at_max_bytes_like_any_recording(tmp_path: Path) -> None:
    one = len(
        sample_line(
            model="iris",
            version="1",
            path="/model/iris/1/invocations",
            content_type=CT,
            body=SPLIT,
            answer=OK,
            now=0.0,
        )
    )
    config = RecordingConfig(
        enabled=True, path=tmp_path / "rec.jsonl", sample_rate=1.0, max_bytes=one + one // 2
    )
    written = [
        record_sample(
            config,
            model="iris",
            version="1",
            path="/model/iris/1/invocations",
            content_type=CT,
            body=SPLIT,
            answer=lambda: OK,
            draw=lambda: 0.0,
        )
        for _ in range(3)
    ]
    assert written == [True, False, False]
