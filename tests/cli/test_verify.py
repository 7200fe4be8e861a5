"""`serving-proxy verify` and `pairs-from-corpus`, end to end on loopback.

The serverless simulator replays the recorded corpus' 2.x answers; pairs come from the
corpus' 1.x answers (`pairs-from-corpus`) or from the proxy recording what a legacy
simulator answered (`recording: {answers: true}`). Every request verify sends goes over
real HTTP through the proxy's translation.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.app import create_app
from proxy.cli.main import main
from proxy.config import parse_config
from sim.app import create_simulator_app
from sim.corpus import load_cases
from tests.conftest import CORPUS
from tests.servers import LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

MODELS = ("iris", "diabetes", "frame", "tensor")
SERVERLESS_PATH = "/model-endpoint/{name}/{version}/invocations"


@pytest.fixture(scope="module")
def replaying_serverless() -> Iterator[LiveServer]:
    """A serverless simulator answering the corpus' recorded 2.x answers."""
    with LiveServer(create_simulator_app("serverless", corpus=CORPUS)) as server:
        yield server


@pytest.fixture(scope="module")
def replaying_legacy() -> Iterator[LiveServer]:
    """A legacy simulator answering the corpus' recorded 1.30.1 answers."""
    with LiveServer(create_simulator_app("legacy", corpus=CORPUS)) as server:
        yield server


@pytest.fixture
def clean_serverless(replaying_serverless: LiveServer) -> Iterator[LiveServer]:
    httpx.put(replaying_serverless.url + "/_sim/faults", json={}).raise_for_status()
    yield replaying_serverless
    httpx.put(replaying_serverless.url + "/_sim/faults", json={}).raise_for_status()


def config_doc(serverless_url: str, **serverless: Any) -> dict[str, Any]:
    return {
        "backends": {"serverless": {"url": serverless_url, "path": SERVERLESS_PATH, **serverless}},
        "models": {name: {} for name in MODELS},
        "state": ":memory:",
    }


def write_config(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def corpus_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pairs") / "corpus.jsonl"
    assert main(["pairs-from-corpus", "--corpus", str(CORPUS), "--out", str(out)]) == 0
    return out


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def verify(*args: str) -> int:
    return main(["verify", *args])


# --- pairs-from-corpus ---------------------------------------------------------------------


def test_every_legacy_scoring_case_becomes_a_pair_of_its_model(corpus_pairs: Path) -> None:
    lines = read_lines(corpus_pairs)
    scoring = [
        case
        for case in load_cases(CORPUS)
        if case.legacy is not None and case.legacy.request.method == "POST"
    ]
    assert [line["id"] for line in lines] == [case.id for case in scoring]
    by_id = {line["id"]: line for line in lines}
    split = by_id["iris/pandas-split"]
    assert split["model"] == "iris"
    assert split["version"] == "1"
    assert split["path"] == "/model/iris/1/invocations"
    assert split["legacy"]["content_type"] == "application/json; format=pandas-split"
    assert split["answer"] == {
        "status": 200,
        "content_type": "application/json",
        "body": "[0, 1, 2]",
    }
    # No Content-Type sent stays no Content-Type; the GET cases are not scoring requests.
    assert by_id["iris/no-content-type"]["legacy"]["content_type"] is None
    assert "iris/ping" not in by_id
    assert stat.S_IMODE(corpus_pairs.stat().st_mode) == 0o600


def test_pairs_from_corpus_filters_a_model_and_refuses_an_empty_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tensor.jsonl"
    args = ["pairs-from-corpus", "--corpus", str(CORPUS), "--model", "tensor"]
    assert main([*args, "--version", "7", "--out", str(out)]) == 0
    lines = read_lines(out)
    assert lines
    assert {(line["model"], line["version"]) for line in lines} == {("tensor", "7")}
    assert main([*args[:3], "--model", "nope", "--out", str(tmp_path / "x")]) == 2
    assert main(["pairs-from-corpus", "--corpus", str(tmp_path), "--out", str(out)]) == 2
    assert "no cases/ directory" in capsys.readouterr().err


# --- verify --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_every_corpus_pair_is_equal_against_the_serverless_endpoint(
    model: str,
    clean_serverless: LiveServer,
    corpus_pairs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, config_doc(clean_serverless.url))
    before = httpx.get(clean_serverless.url + "/_sim/stats").json()["total"]
    report = tmp_path / "report.json"
    code = verify(
        "--pairs", str(corpus_pairs), "--model", model, "--config", str(config),
        "--report", str(report),
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(report.read_text())["summary"]
    pairs = [line for line in read_lines(corpus_pairs) if line["model"] == model]
    assert summary["total"] == summary["equal"] == len(pairs)
    assert summary["parity"] == 1.0
    assert f"summary: {len(pairs)} equal, 0 differs, 0 error" in out
    # The requests really went to the endpoint: all but those the proxy refuses itself.
    sent = httpx.get(clean_serverless.url + "/_sim/stats").json()["total"] - before
    assert 0 < sent <= len(pairs)


def test_an_altered_answer_is_listed_with_its_path_and_fails_the_run(
    clean_serverless: LiveServer,
    corpus_pairs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = read_lines(corpus_pairs)
    for line in lines:
        if line["id"] == "iris/pandas-split":
            line["answer"]["body"] = "[0, 2, 2]"
        if line["id"] == "iris/csv":
            line["answer"]["status"] = 400
    pairs = write_lines(tmp_path / "altered.jsonl", lines)
    config = write_config(tmp_path, config_doc(clean_serverless.url))
    report = tmp_path / "report.json"
    args = ["--pairs", str(pairs), "--model", "iris", "--config", str(config)]
    code = verify(*args, "--report", str(report))
    out = capsys.readouterr().out
    assert code == 1
    rows = {row["id"]: row for row in json.loads(report.read_text())["rows"]}
    split = rows["iris/pandas-split"]
    assert (split["result"], split["path"], split["recorded"], split["translated"]) == (
        "differs",
        "$[1]",
        2,
        1,
    )
    csv = rows["iris/csv"]
    assert (csv["result"], csv["path"], csv["recorded_status"], csv["status"]) == (
        "differs",
        "status",
        400,
        200,
    )
    assert "iris/pandas-split" in out
    assert "$[1]: 2 recorded, 1 translated" in out
    assert "FAILED" in out
    summary = json.loads(report.read_text())["summary"]
    assert (summary["differs"], summary["passed"]) == (2, False)
    # Two differing answers out of thirty pass a lower bar.
    assert verify(*args, "--min-parity", "0.9") == 0


def test_a_float_within_the_models_tolerance_is_equal(
    clean_serverless: LiveServer, corpus_pairs: Path, tmp_path: Path
) -> None:
    lines = [line for line in read_lines(corpus_pairs) if line["id"] == "diabetes/single-row"]
    assert lines
    recorded = json.loads(lines[0]["answer"]["body"])
    lines[0]["answer"]["body"] = json.dumps([recorded[0] * (1 + 1e-4)])
    pairs = write_lines(tmp_path / "nudged.jsonl", lines)
    strict = write_config(tmp_path, config_doc(clean_serverless.url))
    args = ["--pairs", str(pairs), "--model", "diabetes"]
    assert verify(*args, "--config", str(strict)) == 1
    doc = config_doc(clean_serverless.url)
    doc["models"]["diabetes"] = {"compare": {"rel_tol": 1e-3}}
    loose = tmp_path / "loose.yaml"
    loose.write_text(yaml.safe_dump(doc))
    assert verify(*args, "--config", str(loose)) == 0


def test_an_endpoint_without_answers_is_an_error_not_a_difference(
    clean_serverless: LiveServer,
    corpus_pairs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    httpx.put(clean_serverless.url + "/_sim/faults", json={"status": 503}).raise_for_status()
    # Retries off: a 503 that the endpoint keeps answering ends each pair at once.
    doc = config_doc(clean_serverless.url, retry={"on": []})
    config = write_config(tmp_path, doc)
    report = tmp_path / "report.json"
    code = verify(
        "--pairs", str(corpus_pairs), "--model", "tensor", "--config", str(config),
        "--report", str(report),
    )  # fmt: skip
    assert code == 1
    rows = json.loads(report.read_text())["rows"]
    answered = [row for row in rows if row["status"] == 503]
    assert answered
    assert all(row["result"] == "error" for row in answered)
    assert "the endpoint answered 503" in capsys.readouterr().out


def test_an_unreachable_endpoint_is_an_error_for_every_forwarded_pair(
    corpus_pairs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LiveServer(create_simulator_app("serverless")) as gone:
        url = gone.url  # a port that was just served, now closed
    doc = config_doc(url, retry={"on": []})
    config = write_config(tmp_path, doc)
    report = tmp_path / "report.json"
    code = verify(
        "--pairs", str(corpus_pairs), "--model", "diabetes", "--config", str(config),
        "--report", str(report),
    )  # fmt: skip
    assert code == 1
    rows = json.loads(report.read_text())["rows"]
    assert {row["result"] for row in rows} == {"error"}
    assert all(row["detail"].startswith("UF 503") for row in rows)
    assert "UF 503" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"model": "nope"}, "model 'nope' is not in", id="unknown-model"),
        pytest.param({"pairs": "missing.jsonl"}, "cannot read", id="missing-file"),
        pytest.param({"pairs": "bad.jsonl"}, "bad.jsonl:2: not JSON", id="malformed-line"),
        pytest.param({"pairs": "other.jsonl"}, "holds no pair of model 'iris'", id="no-pairs"),
        pytest.param({"config": "broken.yaml"}, "invalid config", id="bad-config"),
    ],
)
def test_usage_and_config_errors_exit_2(
    change: dict[str, str],
    message: str,
    corpus_pairs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_config(tmp_path, config_doc("http://127.0.0.1:9"))
    (tmp_path / "broken.yaml").write_text("backends: {}\nmodels: {}\n")
    first = corpus_pairs.read_text().splitlines()[0]
    (tmp_path / "bad.jsonl").write_text(first + "\n{not json\n")
    tensor = [line for line in read_lines(corpus_pairs) if line["model"] == "tensor"]
    write_lines(tmp_path / "other.jsonl", tensor)
    args = {"pairs": str(corpus_pairs), "model": "iris", "config": "proxy.yaml", **change}
    for key in ("pairs", "config"):
        if not Path(args[key]).is_absolute():
            args[key] = str(tmp_path / args[key])
    code = verify("--pairs", args["pairs"], "--model", args["model"], "--config", args["config"])
    assert code == 2
    assert message in capsys.readouterr().err


def test_min_parity_must_be_a_share(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        verify("--pairs", "p", "--model", "m", "--config", "c", "--min-parity", "1.5")
    assert exit_.value.code == 2
    assert "between 0 and 1" in capsys.readouterr().err


# --- recording: {answers: true} ------------------------------------------------------------


def test_recorded_legacy_answers_are_pairs_that_verify_replays(
    replaying_legacy: LiveServer,
    clean_serverless: LiveServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    recorded = tmp_path / "recorded.jsonl"
    doc = config_doc(clean_serverless.url)
    doc["backends"]["legacy"] = {"url": replaying_legacy.url}
    doc["models"]["iris"] = {"route": "legacy"}
    doc["recording"] = {
        "enabled": True,
        "path": str(recorded),
        "sample_rate": 1.0,
        "answers": True,
    }
    cases = [
        case
        for case in load_cases(CORPUS)
        if case.model in ("iris", "diabetes")
        and case.legacy is not None
        and case.legacy.request.method == "POST"
    ]
    answers: dict[str, httpx.Response] = {}
    with (
        LiveServer(create_app(parse_config(doc, {}))) as proxy,
        httpx.Client(base_url=proxy.url, trust_env=False, timeout=30) as client,
    ):
        for case in cases:
            assert case.legacy is not None
            request = case.legacy.request
            answers[case.id] = client.post(
                f"/model/{case.model}/1/invocations",
                content=request.body_bytes,
                headers={**request.headers, "authorization": "Bearer never-recorded"},
            )
    text = recorded.read_text()
    assert "never-recorded" not in text
    lines = read_lines(recorded)
    iris = [case for case in cases if case.model == "iris"]
    # Legacy-answered requests are pairs; diabetes went to serverless: samples, no answer.
    pairs = [line for line in lines if "answer" in line]
    assert [line["model"] for line in pairs] == ["iris"] * len(iris)
    assert all("answer" not in line for line in lines if line["model"] == "diabetes")
    for case, line in zip(iris, pairs, strict=True):
        got = answers[case.id]
        assert line["answer"]["status"] == got.status_code
        assert line["answer"]["content_type"] == got.headers.get("content-type")
        assert line["answer"].get("body", "").encode() == got.content
        assert line["request_id"] == got.headers["x-request-id"]
        assert "serverless" not in line
    config = write_config(tmp_path, config_doc(clean_serverless.url))
    report = tmp_path / "report.json"
    code = verify(
        "--pairs", str(recorded), "--model", "iris", "--config", str(config),
        "--report", str(report),
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads(report.read_text())["summary"]
    assert summary["equal"] == summary["total"] == len(iris)
    assert summary["unanswered"] == len(cases) - len(iris)


def test_without_answers_a_legacy_answered_request_is_not_recorded(
    replaying_legacy: LiveServer, clean_serverless: LiveServer, tmp_path: Path
) -> None:
    recorded = tmp_path / "recorded.jsonl"
    doc = config_doc(clean_serverless.url)
    doc["backends"]["legacy"] = {"url": replaying_legacy.url}
    doc["models"]["iris"] = {"route": "legacy"}
    doc["recording"] = {"enabled": True, "path": str(recorded), "sample_rate": 1.0}
    with LiveServer(create_app(parse_config(doc, {}))) as proxy:
        reply = httpx.post(
            proxy.url + "/model/iris/1/invocations",
            content=b'{"columns": ["a"], "data": [[1]]}',
            headers={"content-type": "application/json"},
            trust_env=False,
        )
    assert reply.status_code == 200
    assert not recorded.exists()
