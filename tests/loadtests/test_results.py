"""Thresholds and tables, from summary dicts shaped as the locustfile writes them."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.results import (
    RunSummary,
    Thresholds,
    evaluate,
    format_comparison,
    format_summary,
    percentile_key,
    ratio,
)


def summary(**changes: Any) -> RunSummary:
    data: dict[str, Any] = {
        "mode": "open",
        "protocol": "legacy",
        "target": "http://127.0.0.1:8080/model/iris/1/invocations",
        "rate": 50.0,
        "duration_s": 20.0,
        "requests": 1000,
        "failures": 5,
        "rps": 49.8,
        "avg_ms": 12.5,
        "percentiles_ms": {"50": 10, "90": 20, "95": 30, "99": 120, "99.9": 300, "100": 400},
        "schedule": {"scheduled": 1000, "sent": 1000, "completed": 1000, "late": 3, "unsent": 0},
    }
    data.update(changes)
    return RunSummary.from_json(data, label="legacy")


@pytest.mark.parametrize(
    ("fraction", "key"), [(0.5, "50"), (0.95, "95"), (0.99, "99"), (0.999, "99.9"), (1.0, "100")]
)
def test_percentile_keys_match_locust_column_names(fraction: float, key: str) -> None:
    assert percentile_key(fraction) == key


@pytest.mark.parametrize(
    ("thresholds", "breached"),
    [
        pytest.param(Thresholds(p99_ms=250), [], id="p99-holds"),
        pytest.param(Thresholds(p99_ms=100), ["--p99-ms"], id="p99-breached"),
        pytest.param(Thresholds(p95_ms=29), ["--p95-ms"], id="p95-breached"),
        pytest.param(Thresholds(max_error_rate=0.005), [], id="error-rate-at-limit"),
        pytest.param(Thresholds(max_error_rate=0.001), ["--max-error-rate"], id="errors-breached"),
        pytest.param(Thresholds(min_rps=50), ["--min-rps"], id="rps-breached"),
        pytest.param(Thresholds(max_late_rate=0.001), ["--max-late-rate"], id="late-breached"),
        pytest.param(
            Thresholds(p95_ms=10, p99_ms=10, max_error_rate=0.01),
            ["--p95-ms", "--p99-ms"],
            id="two-of-three",
        ),
    ],
)
def test_each_threshold_is_checked_and_named(thresholds: Thresholds, breached: list[str]) -> None:
    checks = evaluate(summary(), thresholds)
    assert [check.flag for check in checks if not check.ok] == breached


def test_an_empty_run_never_passes() -> None:
    empty = summary(requests=0, failures=0, rps=0.0, percentiles_ms={})
    checks = evaluate(empty, Thresholds(p99_ms=250, max_error_rate=0.01))
    assert not any(check.ok for check in checks)


def test_a_check_reads_like_the_flag_it_came_from() -> None:
    (check,) = evaluate(summary(), Thresholds(p99_ms=100))
    assert check.describe() == "--p99-ms: 120 ms <= 100 ms BREACHED"
    (check,) = evaluate(summary(), Thresholds(max_error_rate=0.01))
    assert check.describe() == "--max-error-rate: 0.50% <= 1.00% ok"


@pytest.mark.parametrize(
    ("new", "old", "shown"),
    [(20, 10, "2.00"), (5, 10, "0.50"), (0, 0, "-"), (3, 0, "inf"), (None, 1, "-")],
)
def test_ratio(new: float | None, old: float | None, shown: str) -> None:
    assert ratio(new, old) == shown


def test_comparison_table_puts_the_ratio_beside_each_figure() -> None:
    legacy = summary()
    serverless = summary(percentiles_ms={**legacy.percentiles_ms, "99": 240}, rps=49.8)
    lines = format_comparison(legacy, serverless).splitlines()
    assert lines[0].split() == ["metric", "legacy", "serverless", "serverless", "÷", "legacy"]
    rows = {line.split("  ")[0].strip(): line.split() for line in lines[2:]}
    assert rows["p99 ms"][-3:] == ["120", "240", "2.00"]
    assert rows["throughput req/s"][-1] == "1.00"
    assert rows["sent late"][-3:] == ["3", "3", "1.00"]


def test_closed_loop_tables_have_no_schedule_figures() -> None:
    text = format_summary(summary(mode="closed"))
    assert "sent late" in text
    late_row = next(line for line in text.splitlines() if line.startswith("sent late"))
    assert late_row.split()[-1] == "-"
