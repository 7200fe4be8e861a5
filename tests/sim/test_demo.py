"""The demo: its URLs and config, its refusals, and one whole run against the real processes.

Its comparison rules are `sim.equality`'s, tested in test_equality.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from sim.cli import demo
from sim.corpus import DEFAULT_CORPUS
from sim.demo import legacy_cases, legacy_path, proxy_config, serverless_path

needs_corpus = pytest.mark.skipif(
    not (DEFAULT_CORPUS / "cases").is_dir(), reason=f"no corpus at {DEFAULT_CORPUS}"
)


@needs_corpus
def test_every_case_has_a_legacy_url() -> None:
    cases = legacy_cases(DEFAULT_CORPUS)
    assert cases
    paths = {case.id: legacy_path(case) for case in cases}
    assert paths["iris/pandas-split"] == "/model/iris/1/invocations"
    assert paths["iris/ping"] == "/ping"
    assert all(case.model in proxy_config(1, 2, 3)["models"] for case in cases)


@needs_corpus
def test_the_direct_request_goes_where_the_proxy_sends_it() -> None:
    case = next(case for case in legacy_cases(DEFAULT_CORPUS) if case.id == "iris/pandas-split")
    assert case.v2 is not None
    assert serverless_path(case, case.v2.request) == "/model-endpoint/iris/1/invocations"


@pytest.mark.integration
@needs_corpus
def test_demo_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    code = demo(["--tries", "1", "--start-timeout", "60"])
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
    assert demo(["--corpus", str(tmp_path)]) == 2
    assert "no corpus cases" in capsys.readouterr().err


def test_demo_strips_the_separator_argparse_keeps(tmp_path: Path) -> None:
    # `serving-proxy demo -- --corpus X` reaches demo() as ["--", "--corpus", X]
    (tmp_path / "cases").mkdir()
    assert demo(["--", "--corpus", str(tmp_path)]) == 2


def test_demo_refuses_a_directory_that_is_not_a_corpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo(["--corpus", str(tmp_path)]) == 2
    assert "no corpus cases" in capsys.readouterr().err


def test_demo_hold_needs_the_admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVING_PROXY_ADMIN_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exited:
        demo(["--hold"])
    assert exited.value.code == 2
