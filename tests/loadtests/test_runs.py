"""Headless locust runs against simulators on loopback, through the real CLI.

Each run is short (2-8 s of load, at most ~15 s with locust's start-up) and bounded; the
only timing figures asserted are the issue's own checks: a threshold set below the
simulator's known latency fails the run, and a one-second stall shows in the fixed-rate
p99. Everything else is counted: what the load generator reports equals what the
simulator received.
"""

from __future__ import annotations

import json
import subprocess
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from tests.integration.proxy_process import ProxyProcess
from tests.loadtests.conftest import (
    PROJECT_ROOT,
    SimulatorProcess,
    cli_command,
    read_summary,
    run_cli,
)

pytestmark = [
    pytest.mark.integration,
    # Looked up, never imported: locust monkey-patches the importing process with gevent.
    pytest.mark.skipif(find_spec("locust") is None, reason="needs the 'load' extra (locust)"),
]

SERVERLESS_PATH = "/serving-endpoints/iris/invocations"
# Short request timeout: the CLI's own kill deadline (duration + timeout + 60 s) then stays
# well inside the test's subprocess timeout.
COMMON = ("--timeout-s", "5")


def _run_args(sim: SimulatorProcess, report_dir: Path, *extra: str) -> tuple[str, ...]:
    return (
        "--host", sim.url,
        "--path", SERVERLESS_PATH,
        "--protocol", "serverless",
        "--report-dir", str(report_dir),
        *COMMON,
        *extra,
    )  # fmt: skip


def _explain(result: Any) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def test_open_run_writes_reports_and_counts_what_the_simulator_received(
    serverless_sim: SimulatorProcess, tmp_path: Path
) -> None:
    serverless_sim.reset()
    result = run_cli(
        *_run_args(serverless_sim, tmp_path, "--rate", "40", "--duration", "3"),
        "--p99-ms", "2000", "--max-error-rate", "0.01",
    )  # fmt: skip
    assert result.returncode == 0, _explain(result)
    for name in ("report.html", "locust_stats.csv", "locust_failures.csv", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    summary = read_summary(tmp_path)
    received = serverless_sim.total()
    assert summary["requests"] == received == 120
    assert summary["failures"] == 0
    assert summary["schedule"]["scheduled"] == summary["schedule"]["sent"] == 120
    assert summary["schedule"]["unsent"] == 0
    assert sum(entry["requests"] for entry in summary["by_name"].values()) == 120
    # The mix is the iris sample: every one of its payloads was sent.
    assert len(summary["by_name"]) == 10
    assert "PASS" in result.stdout
    assert "p99 ms" in result.stdout


def test_a_threshold_below_the_simulators_latency_fails_the_run_and_is_named(
    serverless_sim: SimulatorProcess, tmp_path: Path
) -> None:
    serverless_sim.reset(delay_ms=60)
    try:
        result = run_cli(
            *_run_args(serverless_sim, tmp_path, "--rate", "20", "--duration", "2"),
            "--p99-ms", "30", "--max-error-rate", "0.01",
        )  # fmt: skip
    finally:
        serverless_sim.reset()
    assert result.returncode == 1, _explain(result)
    assert "FAIL: breached --p99-ms" in result.stdout
    assert "--max-error-rate: 0.00% <= 1.00% ok" in result.stdout
    assert read_summary(tmp_path)["percentiles_ms"]["99"] >= 60


def test_legacy_requests_through_the_proxy_reach_the_serverless_simulator(
    serverless_sim: SimulatorProcess, tmp_path: Path
) -> None:
    config = {
        "backends": {
            "serverless": {
                "url": serverless_sim.url,
                "path": "/serving-endpoints/{endpoint}/invocations",
            }
        },
        "models": {"iris": {"stages": {"Production": "1"}}},
        "logging": {"level": "warning", "access_log": False},
    }
    serverless_sim.reset()
    with ProxyProcess(config, tmp_path) as proxy:
        result = run_cli(
            "--host", proxy.url,
            "--path", "/model/iris/Production/invocations",
            "--protocol", "legacy",
            "--rate", "30", "--duration", "3",
            "--max-error-rate", "0",
            "--report-dir", str(tmp_path / "report"),
            *COMMON,
        )  # fmt: skip
    assert result.returncode == 0, _explain(result)
    summary = read_summary(tmp_path / "report")
    stats = serverless_sim.stats()
    assert summary["requests"] == stats["total"] == 90
    assert summary["failures"] == 0
    assert stats["by_path"] == {SERVERLESS_PATH: 90}


def test_master_and_two_workers_send_exactly_what_the_simulator_counts(
    serverless_sim: SimulatorProcess, tmp_path: Path
) -> None:
    serverless_sim.reset()
    result = run_cli(
        *_run_args(serverless_sim, tmp_path, "--rate", "40", "--duration", "3"),
        "--workers", "2", "--max-error-rate", "0",
    )  # fmt: skip
    assert result.returncode == 0, _explain(result)
    summary = read_summary(tmp_path)
    assert summary["workers"] == 2
    assert summary["schedule"]["senders"] == 2
    assert summary["requests"] == serverless_sim.total() == 120
    assert (tmp_path / "worker-0.log").exists()
    assert (tmp_path / "worker-1.log").exists()


def test_compare_runs_both_sides_on_the_same_mix_and_prints_ratios(
    legacy_sim: SimulatorProcess, serverless_sim: SimulatorProcess, tmp_path: Path
) -> None:
    legacy_sim.reset()
    serverless_sim.reset()
    result = run_cli(
        "compare",
        "--legacy-host", legacy_sim.url, "--legacy-path", "/invocations",
        "--serverless-host", serverless_sim.url, "--serverless-path", SERVERLESS_PATH,
        "--payloads", "sample:iris",
        "--rate", "20", "--duration", "2",
        "--max-error-rate", "0",
        "--report-dir", str(tmp_path),
        *COMMON,
    )  # fmt: skip
    assert result.returncode == 0, _explain(result)
    header = next(line for line in result.stdout.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "legacy", "serverless", "serverless", "÷", "legacy"]
    requests_row = next(line for line in result.stdout.splitlines() if line.startswith("requests"))
    assert requests_row.split() == ["requests", "40", "40", "1.00"]
    assert legacy_sim.total() == serverless_sim.total() == 40
    comparison = json.loads((tmp_path / "comparison.json").read_text())
    legacy_names = set(comparison["legacy"]["percentiles_ms"])
    assert legacy_names == set(comparison["serverless"]["percentiles_ms"])
    assert (tmp_path / "legacy" / "report.html").exists()
    assert (tmp_path / "serverless" / "report.html").exists()


def _run_with_stall(sim: SimulatorProcess, report_dir: Path, *extra: str) -> dict[str, Any]:
    """A 50 req/s, 8 s run; 2 s in (100 requests received) the simulator freezes for 1 s."""
    sim.reset()
    args = _run_args(sim, report_dir, "--rate", "50", "--duration", "8", *extra)
    with subprocess.Popen(
        cli_command(*args), cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    ) as process:  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while sim.total() < 100 and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.02)
            sim.pause()
            time.sleep(1.0)
            sim.resume()
            stdout, stderr = process.communicate(timeout=90)
        finally:
            if sim.paused:
                sim.resume()
            if process.poll() is None:
                process.terminate()
                process.wait(10)
    assert process.returncode == 0, f"{stdout}\n{stderr}"
    summary = read_summary(report_dir)
    summary["received"] = sim.total()
    summary["stdout"] = stdout
    return summary


def test_fixed_rate_p99_includes_a_one_second_stall_a_closed_loop_hides_it(
    tmp_path: Path,
) -> None:
    sim = SimulatorProcess("serverless", tmp_path)
    sim.start()
    try:
        fixed = _run_with_stall(sim, tmp_path / "open", "--mode", "open")
        closed = _run_with_stall(sim, tmp_path / "closed", "--mode", "closed", "--users", "2")
    finally:
        sim.stop()
    figures = {
        name: {
            "requests": run["requests"],
            "received": run["received"],
            "p50": run["percentiles_ms"]["50"],
            "p95": run["percentiles_ms"]["95"],
            "p99": run["percentiles_ms"]["99"],
            "max": run["percentiles_ms"]["100"],
            "rps": round(run["rps"], 1),
        }
        for name, run in (("open", fixed), ("closed", closed))
    }
    print(json.dumps(figures, indent=2))  # the README quotes these (pytest -s)
    # The open model sent every request on schedule, stall or not...
    assert fixed["requests"] == fixed["received"] == fixed["schedule"]["scheduled"] == 400
    assert fixed["schedule"]["unsent"] == 0
    # ...so the requests due during the freeze waited for it, and the p99 shows the stall.
    assert fixed["percentiles_ms"]["99"] >= 800
    # The closed loop stopped sending while it waited: those requests are simply missing.
    assert closed["requests"] == closed["received"] < fixed["requests"]
