"""Recording a sample of legacy requests: off by default, sampled, capped, replayable."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from loadtests import mix
from proxy.config.telemetry import RecordingConfig
from proxy.telemetry.recorder import record_sample, sample_line

SPLIT = b'{"columns": ["a", "b"], "data": [[1, NaN]]}'
V2 = b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1, NaN]]}}'


def record(config: RecordingConfig, draw: float = 0.0, **changes: Any) -> bool:
    request: dict[str, Any] = {
        "model": "iris",
        "version": "1",
        "path": "/model/iris/Production/invocations",
        "content_type": "application/json; format=pandas-split",
        "body": SPLIT,
        "v2_content_type": "application/json",
        "v2_body": V2,
    }
    request.update(changes)
    return record_sample(config, draw=lambda: draw, **request)


def test_recording_is_off_unless_the_config_turns_it_on(tmp_path: Path) -> None:
    target = tmp_path / "rec.jsonl"
    assert RecordingConfig().enabled is False
    assert record(RecordingConfig(path=target, sample_rate=1.0)) is False
    assert not target.exists()


def test_enabled_without_a_path_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="path: is required"):
        RecordingConfig(enabled=True)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"sample_rate": 1.5}, id="rate-above-1"),
        pytest.param({"sample_rate": -0.1}, id="negative-rate"),
        pytest.param({"max_bytes": 0}, id="no-room"),
        pytest.param({"pth": "x"}, id="typo"),
    ],
)
def test_bad_recording_configs_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RecordingConfig(**bad)


def test_only_the_sampled_share_is_written(tmp_path: Path) -> None:
    config = RecordingConfig(enabled=True, path=tmp_path / "rec.jsonl", sample_rate=0.25)
    written = [record(config, draw=draw) for draw in (0.0, 0.24, 0.25, 0.9)]
    assert written == [True, True, False, False]
    assert len((tmp_path / "rec.jsonl").read_text().splitlines()) == 2


def test_a_line_keeps_the_request_exactly_and_no_header(tmp_path: Path) -> None:
    config = RecordingConfig(enabled=True, path=tmp_path / "rec.jsonl", sample_rate=1.0)
    assert record(config)
    line = json.loads((tmp_path / "rec.jsonl").read_text())
    assert line["legacy"] == {
        "content_type": "application/json; format=pandas-split",
        "body": SPLIT.decode(),
    }
    assert line["serverless"] == {"content_type": "application/json", "body": V2.decode()}
    assert line["id"] == "recorded/iris/1"
    assert line["path"] == "/model/iris/Production/invocations"
    assert "headers" not in line
    assert "authorization" not in json.dumps(line).lower()


def test_the_file_is_private_to_its_owner(tmp_path: Path) -> None:
    config = RecordingConfig(enabled=True, path=tmp_path / "rec.jsonl", sample_rate=1.0)
    record(config)
    assert stat.S_IMODE((tmp_path / "rec.jsonl").stat().st_mode) == 0o600


def test_the_file_stops_growing_at_max_bytes(tmp_path: Path) -> None:
    one = len(sample_line(model="iris", version="1", path="/model/iris/Production/invocations",
                          content_type="application/json; format=pandas-split", body=SPLIT,
                          v2_content_type="application/json", v2_body=V2, now=0.0))  # fmt: skip
    config = RecordingConfig(
        enabled=True, path=tmp_path / "rec.jsonl", sample_rate=1.0, max_bytes=3 * one + one // 2
    )
    written = [record(config) for _ in range(5)]
    assert written == [True, True, True, False, False]
    assert (tmp_path / "rec.jsonl").stat().st_size <= config.max_bytes


def test_an_unwritable_file_never_fails_the_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = RecordingConfig(
        enabled=True, path=tmp_path / "missing-dir" / "rec.jsonl", sample_rate=1.0
    )
    assert record(config) is False
    assert "recording: cannot append" in caplog.text


def test_a_request_with_no_translation_and_a_binary_body_is_still_replayable(
    tmp_path: Path,
) -> None:
    config = RecordingConfig(enabled=True, path=tmp_path / "rec.jsonl", sample_rate=1.0)
    raw = b"a,b\n\xff,1\n"
    record(config, content_type="text/csv", body=raw, v2_content_type=None, v2_body=None)
    record(config, content_type=None)
    legacy = mix.load(tmp_path / "rec.jsonl", "legacy")
    assert [(p.content_type, p.body) for p in legacy] == [("text/csv", raw), (None, SPLIT)]
    # The serverless side exists only where the proxy translated the request.
    assert [p.body for p in mix.load(tmp_path / "rec.jsonl", "serverless")] == [V2]
