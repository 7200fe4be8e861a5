"""A finished run's figures, the pass/fail thresholds and the tables printed. Pure.

The locust process writes `summary.json` (see `locustfile.write_summary`); everything the
CLI decides and prints is computed here from that dict, so it is tested without locust.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Percentiles kept in summary.json, as locust names them in its CSV columns.
PERCENTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99, 0.999, 1.0)


def percentile_key(fraction: float) -> str:
    """`0.99` -> `"99"`, `0.999` -> `"99.9"`, `1.0` -> `"100"`."""
    return f"{fraction * 100:.10g}"


@dataclass(frozen=True, slots=True)
class Schedule:
    """What the senders of a run report: the open model's proof that it kept the schedule.

    `late` requests went out more than the allowed lag after their due time (their latency
    still counts from the due time); `unsent` were due but could not go out before the
    window closed (all `max_in_flight` places were taken). A closed-loop run has no schedule:
    only `sent` and `completed` mean anything there.
    """

    scheduled: int = 0
    sent: int = 0
    completed: int = 0
    late: int = 0
    unsent: int = 0
    max_lag_ms: float = 0.0
    senders: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Schedule:
        return cls(
            scheduled=int(data.get("scheduled", 0)),
            sent=int(data.get("sent", 0)),
            completed=int(data.get("completed", 0)),
            late=int(data.get("late", 0)),
            unsent=int(data.get("unsent", 0)),
            max_lag_ms=float(data.get("max_lag_ms", 0.0)),
            senders=int(data.get("senders", 0)),
        )


@dataclass(frozen=True, slots=True)
class RunSummary:
    """The figures of one run, as read back from summary.json."""

    label: str
    mode: str
    protocol: str
    target: str
    rate: float
    duration_s: float
    requests: int
    failures: int
    rps: float
    avg_ms: float
    percentiles_ms: Mapping[str, float]
    schedule: Schedule = field(default_factory=Schedule)
    errors: Sequence[Mapping[str, Any]] = ()
    workers: int = 0

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def late_rate(self) -> float:
        due = self.schedule.sent + self.schedule.unsent
        return (self.schedule.late + self.schedule.unsent) / due if due else 0.0

    def p(self, fraction: float) -> float:
        return float(self.percentiles_ms.get(percentile_key(fraction), 0.0))

    @classmethod
    def from_json(cls, data: Mapping[str, Any], label: str = "") -> RunSummary:
        return cls(
            label=label or str(data.get("label", "")),
            mode=str(data.get("mode", "")),
            protocol=str(data.get("protocol", "")),
            target=str(data.get("target", "")),
            rate=float(data.get("rate", 0.0)),
            duration_s=float(data.get("duration_s", 0.0)),
            requests=int(data["requests"]),
            failures=int(data["failures"]),
            rps=float(data["rps"]),
            avg_ms=float(data["avg_ms"]),
            percentiles_ms={str(k): float(v) for k, v in data["percentiles_ms"].items()},
            schedule=Schedule.from_json(data.get("schedule", {})),
            errors=tuple(data.get("errors", ())),
            workers=int(data.get("workers", 0)),
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["error_rate"] = self.error_rate
        return out


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Pass/fail limits; None means not checked. Names follow the CLI flags."""

    p95_ms: float | None = None
    p99_ms: float | None = None
    max_error_rate: float | None = None
    min_rps: float | None = None
    max_late_rate: float | None = None

    def any(self) -> bool:
        return any(value is not None for value in asdict(self).values())


@dataclass(frozen=True, slots=True)
class Check:
    """One threshold against its measured value."""

    flag: str
    measured: float
    limit: float
    ok: bool
    unit: str

    def describe(self) -> str:
        sign = ">=" if self.flag == "--min-rps" else "<="
        verdict = "ok" if self.ok else "BREACHED"
        return (
            f"{self.flag}: {_fmt(self.measured, self.unit)} {sign} {_fmt(self.limit, self.unit)}"
            f" {verdict}"
        )


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value * 100:.2f}%"
    if unit == "ms":
        return f"{value:g} ms"
    return f"{value:.1f} {unit}"


def evaluate(summary: RunSummary, thresholds: Thresholds) -> list[Check]:
    """Every configured threshold, checked; a run passes when every `ok` is true.

    A run that completed no request breaches every latency and throughput limit: an empty
    run must never pass a CI gate.
    """
    checks: list[Check] = []
    empty = summary.requests == 0

    def upper(flag: str, measured: float, limit: float | None, unit: str) -> None:
        if limit is not None:
            checks.append(Check(flag, measured, limit, not empty and measured <= limit, unit))

    upper("--p95-ms", summary.p(0.95), thresholds.p95_ms, "ms")
    upper("--p99-ms", summary.p(0.99), thresholds.p99_ms, "ms")
    upper("--max-error-rate", summary.error_rate, thresholds.max_error_rate, "%")
    if thresholds.min_rps is not None:
        checks.append(
            Check(
                "--min-rps",
                summary.rps,
                thresholds.min_rps,
                summary.rps >= thresholds.min_rps,
                "req/s",
            )
        )
    upper("--max-late-rate", summary.late_rate, thresholds.max_late_rate, "%")
    return checks


# --- tables ----------------------------------------------------------------------------------


def _rows(summary: RunSummary) -> list[tuple[str, float | None, str]]:
    """(metric, value, how to print it); None where the metric does not apply."""
    open_model = summary.mode == "open"
    return [
        ("requests", summary.requests, "int"),
        ("failures", summary.failures, "int"),
        ("error rate", summary.error_rate, "%"),
        ("throughput req/s", summary.rps, "f1"),
        ("avg ms", summary.avg_ms, "f1"),
        ("p50 ms", summary.p(0.5), "g"),
        ("p95 ms", summary.p(0.95), "g"),
        ("p99 ms", summary.p(0.99), "g"),
        ("p99.9 ms", summary.p(0.999), "g"),
        ("max ms", summary.p(1.0), "g"),
        ("sent late", summary.schedule.late if open_model else None, "int"),
        ("not sent", summary.schedule.unsent if open_model else None, "int"),
    ]


def _cell(value: float | None, how: str) -> str:
    if value is None:
        return "-"
    if how == "int":
        return str(int(value))
    if how == "%":
        return f"{value * 100:.2f}%"
    if how == "f1":
        return f"{value:.1f}"
    return f"{value:g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_summary(summary: RunSummary) -> str:
    """One run as a two-column table."""
    rows = [[name, _cell(value, how)] for name, value, how in _rows(summary)]
    return _table(["metric", summary.label or summary.protocol], rows)


def ratio(new: float | None, old: float | None) -> str:
    """`new ÷ old` to two decimals; `-` where it means nothing (0 ÷ 0, or no value)."""
    if new is None or old is None:
        return "-"
    if old == 0:
        return "-" if new == 0 else "inf"
    value = new / old
    return f"{value:.2f}" if math.isfinite(value) else "-"


def format_comparison(legacy: RunSummary, serverless: RunSummary) -> str:
    """Legacy and serverless side by side, with the ratio serverless ÷ legacy."""
    rows = []
    for (name, old, how), (_, new, _) in zip(_rows(legacy), _rows(serverless), strict=True):
        rows.append([name, _cell(old, how), _cell(new, how), ratio(new, old)])
    return _table(["metric", "legacy", "serverless", "serverless ÷ legacy"], rows)
