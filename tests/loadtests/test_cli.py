"""The CLI's decisions that need no locust run: arguments, the locust command, samples."""

from __future__ import annotations

import io
import itertools
import json
import os
from pathlib import Path

import pytest

from loadtests import cli, mix
from proxy.cli.main import main as proxy_main
from tests.conftest import CORPUS


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(argv), out), out.getvalue()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--path", "/x"], "--host is required", id="no-host"),
        pytest.param(
            ["--host", "127.0.0.1:1", "--path", "/x"], "must start with http", id="no-scheme"
        ),
        pytest.param(
            ["--host", "http://127.0.0.1:1", "--path", "/x", "--ramp-steps", "2", "--ramp-s", "30"],
            "--ramp-s",
            id="ramp-longer-than-run",
        ),
        pytest.param(
            [
                "--host",
                "http://127.0.0.1:1",
                "--path",
                "/x",
                "--workers",
                "2",
                "--expect-workers",
                "2",
            ],
            "--workers starts local workers",
            id="both-worker-kinds",
        ),
        pytest.param(
            ["--host", "http://127.0.0.1:1", "--path", "/x", "--payloads", "/nonexistent.jsonl"],
            "cannot read",
            id="missing-payloads",
        ),
    ],
)
def test_a_run_that_cannot_be_made_exits_2_before_starting_locust(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _ = run(*argv, "--report-dir", str(tmp_path))
    assert code == cli.EXIT_ERROR
    assert message in capsys.readouterr().err
    assert not (tmp_path / "locust.log").exists()


def test_serverless_host_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.HOST_ENV, "https://workspace.example/")
    assert cli._check_host(None, "serverless", dict(os.environ)) == "https://workspace.example"
    with pytest.raises(cli.RunError):
        cli._check_host(None, "legacy", {cli.HOST_ENV: "https://workspace.example"})


def test_the_locust_command_carries_every_setting_and_no_secret(tmp_path: Path) -> None:
    target = cli.Target(
        host="http://127.0.0.1:8080",
        path="/model/iris/1/invocations",
        protocol="legacy",
        headers={"X-Client-Id": "ci"},
        token_env="MY_TOKEN",
        label="legacy",
    )
    load = cli.Load(rate=50, duration=20, payloads="sample:iris", workers=2, master_bind_port=5999)
    cmd = cli.locust_command(target, load, tmp_path)
    options = dict(itertools.pairwise(cmd))
    assert options["--host"] == "http://127.0.0.1:8080"
    assert options["--sp-rate"] == "50"
    assert options["--sp-duration"] == "20"
    assert options["--sp-users"] == "2"  # one sender per worker
    assert options["--sp-token-env"] == "MY_TOKEN"  # the name, never the value
    assert json.loads(options["--sp-headers"]) == {"X-Client-Id": "ci"}
    assert options["--expect-workers"] == "2"
    assert options["--master-bind-port"] == "5999"
    assert options["--csv"] == str(tmp_path / "locust")
    assert options["--html"] == str(tmp_path / "report.html")
    assert "--headless" in cmd


def test_closed_mode_runs_users_not_senders() -> None:
    assert (
        cli.Load(rate=10, duration=5, payloads="x", mode="closed", users=7, workers=2).senders == 7
    )
    assert cli.Load(rate=10, duration=5, payloads="x", workers=3).senders == 3
    assert cli.Load(rate=10, duration=5, payloads="x").senders == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(
            ["--host", "http://p", "--path", "/model/iris/1/invocations", "--via-proxy"],
            [("legacy", "http://p", "legacy", {"X-Serving-Proxy-Route": "legacy"}),
             ("serverless", "http://p", "legacy", {"X-Serving-Proxy-Route": "serverless"})],
            id="via-proxy",
        ),
        pytest.param(
            ["--legacy-host", "http://old", "--legacy-path", "/model/iris/1/invocations",
             "--serverless-host", "http://new",
             "--serverless-path", "/serving-endpoints/iris/invocations"],
            [("legacy", "http://old", "legacy", {}),
             ("serverless", "http://new", "serverless", {})],
            id="direct",
        ),
    ],
)  # fmt: skip
def test_compare_sides(
    argv: list[str], expected: list[tuple[str, str, str, dict[str, str]]]
) -> None:
    args = cli.build_compare_parser().parse_args(argv)
    sides = [cli._side(args, side) for side in mix.PROTOCOLS]
    assert [(t.label, t.host, t.protocol, t.headers) for t in sides] == expected


@pytest.mark.skipif(not CORPUS.is_dir(), reason="needs ../shared/corpus")
def test_samples_check_passes_on_the_committed_files() -> None:
    code, out = run("samples", "--corpus", str(CORPUS), "--check")
    assert (code, out) == (cli.EXIT_OK, "")


@pytest.mark.skipif(not CORPUS.is_dir(), reason="needs ../shared/corpus")
def test_samples_check_names_a_stale_file(tmp_path: Path) -> None:
    cli.main(["samples", "--corpus", str(CORPUS), "--out", str(tmp_path)], io.StringIO())
    (tmp_path / "iris.jsonl").write_text("")
    code, out = run("samples", "--corpus", str(CORPUS), "--out", str(tmp_path), "--check")
    assert code == cli.EXIT_BREACH
    assert out.strip() == f"stale: {tmp_path / 'iris.jsonl'}"


def test_serving_proxy_loadtest_hands_the_rest_of_the_line_to_the_cli(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        proxy_main(["loadtest", "compare", "--help"])
    assert info.value.code == 0
    assert "serverless ÷ legacy" in capsys.readouterr().out
