"""`serving-proxy report`: the migration report of a running proxy, from its admin API.

Fetches `GET /admin/report` through `proxy.cli.client.AdminClient` and prints a terminal
table per model, or the same figures as JSON or CSV for a status meeting. Rendering is
pure (`render_*` take the fetched document); only `fetch` and `run_report` do I/O.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from proxy import jsoncodec
from proxy.cli.client import DEFAULT_TIMEOUT_S, DEFAULT_URL, AdminClient, CliError
from proxy.cli.table import table_lines
from proxy.config import ADMIN_TOKEN_ENV
from proxy.telemetry.slots import EVENTS

FORMATS = ("table", "json", "csv")
SIDES = ("legacy", "serverless")
QUANTILES = ("p50", "p95", "p99")
# CSV/JSON columns of one model, in order: what a spreadsheet shows left to right.
MODEL_COLUMNS = (
    "model",
    "requests",
    "errors",
    "error_rate",
    *(f"{side}_{what}" for side in SIDES for what in ("requests", "error_rate")),
    *(f"{side}_{q}_ms" for side in SIDES for q in QUANTILES),
    *(f"ratio_{q}" for q in QUANTILES),
    "proxy_p50_ms",
    "proxy_p99_ms",
    "weight_percent",
    "rollout_state",
    "parity_rate",
    "parity_compared",
    "parity_mismatch",
    "parity_error",
    "parity_dropped",
    "legacy_client_keys",
    "legacy_client_requests",
    *EVENTS,
)
CLIENT_COLUMNS = ("model", "client", "identity", "requests", "last_seen", "formats")
# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV
# injection"); a client label can be a header value the client chose
# (`reporting.show_client_header`), so such a text cell is written behind a `'`.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def fetch(url: str, token: str | None, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """The `/admin/report` document of the proxy at `url`.

    Raises:
        CliError: unreachable, refused, or not a report.
    """
    document = AdminClient(url, token, timeout).request("GET", "/admin/report")
    if not isinstance(document, dict) or "models" not in document:
        raise CliError(f"{url.rstrip('/')}/admin/report did not answer a report")
    return document


def model_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per model (the CSV and JSON exports), columns as `MODEL_COLUMNS`."""
    rows = []
    for name, view in report["models"].items():
        row: dict[str, Any] = {
            "model": name,
            "requests": view["requests"],
            "errors": view["errors"],
            "error_rate": view["error_rate"],
        }
        for side in SIDES:
            backend = view["backends"][side]
            row[f"{side}_requests"] = backend["requests"]
            row[f"{side}_error_rate"] = backend["error_rate"]
        for side in SIDES:
            for q in QUANTILES:
                row[f"{side}_{q}_ms"] = view["backends"][side][q]
        for q in QUANTILES:
            row[f"ratio_{q}"] = view["ratio"][q]
        row["proxy_p50_ms"] = view["proxy"]["p50"]
        row["proxy_p99_ms"] = view["proxy"]["p99"]
        row["weight_percent"] = view["weight"]
        row["rollout_state"] = view["state"]
        parity = view["parity"]
        row["parity_rate"] = parity["rate"]
        row["parity_compared"] = parity["match"] + parity["mismatch"]
        row["parity_mismatch"] = parity["mismatch"]
        row["parity_error"] = parity["error"]
        row["parity_dropped"] = parity["dropped"]
        named = [c for c in view["clients"] if c["client"] != "other"]
        row["legacy_client_keys"] = len(named)
        row["legacy_client_requests"] = sum(c["requests"] for c in view["clients"])
        events = view.get("events", {})
        for event in EVENTS:
            row[event] = events.get(event, 0)
        rows.append(row)
    return rows


def client_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The legacy client inventory, one row per model × client key."""
    return [
        {
            "model": name,
            "client": client["client"],
            "identity": client.get("identity") or "",
            "requests": client["requests"],
            "last_seen": iso(client["last_seen"]),
            "formats": " ".join(f"{k}:{v}" for k, v in client["formats"].items()),
        }
        for name, view in report["models"].items()
        for client in view["clients"]
    ]


def iso(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "n/a"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def render_json(report: Mapping[str, Any]) -> str:
    document = {
        "generated_at": iso(report["now"]),
        "window_s": report["window_s"],
        "models": model_rows(report),
        "legacy_clients": client_rows(report),
    }
    return jsoncodec.dumps(document).decode() + "\n"


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell a spreadsheet shows and never evaluates: None is empty, a
    text that could start a formula gets a leading `'`; numbers are written as they are
    (a number cannot carry a formula, and a `'` would turn it into text)."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def render_csv(report: Mapping[str, Any], what: str = "models") -> str:
    out = io.StringIO()
    rows = client_rows(report) if what == "clients" else model_rows(report)
    columns = CLIENT_COLUMNS if what == "clients" else MODEL_COLUMNS
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cell(v) for k, v in row.items()})
    return out.getvalue()


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def render_table(report: Mapping[str, Any]) -> str:
    """The terminal report: per model, latency legacy vs serverless, the proxy's share,
    weight, rollout, parity and the legacy client inventory."""
    lines = [
        f"serving-proxy migration report, {iso(report['now'])}, "
        f"window {report['window_s']:g} s (HDR, {report['significant_figures']} figures)"
        + (f", {report['replicas']} replicas" if report.get("replicas", 1) > 1 else "")
        + (f", {report['workers']} workers" if report.get("workers", 1) > 1 else ""),
    ]
    if report.get("replicas_reachable") is False:
        lines.append("THIS REPLICA ONLY: the state store did not answer, other replicas left out")
    if not report["models"]:
        lines.append("no models have been called yet")
    for name, view in report["models"].items():
        weight = "n/a" if view["weight"] is None else f"{view['weight']:g}%"
        lines += [
            "",
            f"{name}: {view['requests']} requests, error rate {_pct(view['error_rate'])}, "
            f"serverless weight {weight}, rollout {view['state'] or 'n/a'}",
        ]
        rows = []
        for side in SIDES:
            b = view["backends"][side]
            rows.append(
                [side, str(b["requests"]), _pct(b["error_rate"]), *(_ms(b[q]) for q in QUANTILES)]
            )
        rows.append(["serverless/legacy", "", "", *(_ratio(view["ratio"][q]) for q in QUANTILES)])
        rows.append(
            ["proxy (own)", "", "", _ms(view["proxy"]["p50"]), "", _ms(view["proxy"]["p99"])]
        )
        lines += table_lines(["", "requests", "errors", "p50 ms", "p95 ms", "p99 ms"], rows)
        parity = view["parity"]
        compared = parity["match"] + parity["mismatch"]
        lines.append(
            f"  shadow parity: {_pct(parity['rate'])} match of {compared} compared"
            f" (mismatch {parity['mismatch']}, error {parity['error']}, "
            f"dropped {parity['dropped']})"
            if compared or parity["error"] or parity["dropped"]
            else "  shadow parity: n/a (no comparisons in the window)"
        )
        events = view.get("events", {})
        if any(events.values()):
            lines.append(
                "  endpoint realities: "
                + ", ".join(f"{event.replace('_', ' ')} {events[event]}" for event in EVENTS)
            )
        clients = view["clients"]
        if not clients:
            lines.append("  legacy clients: none seen")
            continue
        lines.append("  legacy clients (still calling /model/<name>/<version>/invocations):")
        lines += table_lines(
            ["client key", "identity", "requests", "last seen", "formats"],
            [
                [
                    c["client"],
                    c.get("identity") or "-",
                    str(c["requests"]),
                    iso(c["last_seen"]),
                    " ".join(f"{k}:{v}" for k, v in c["formats"].items()),
                ]
                for c in clients
            ],
            indent="    ",
            align="llrll",
        )
    return "\n".join(lines) + "\n"


def render(report: Mapping[str, Any], fmt: str, what: str = "models") -> str:
    if fmt == "json":
        return render_json(report)
    if fmt == "csv":
        return render_csv(report, what)
    return render_table(report)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"the running proxy (default {DEFAULT_URL})"
    )
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument(
        "--csv-table",
        choices=("models", "clients"),
        default="models",
        help="with --format csv: one row per model, or the legacy client inventory",
    )
    parser.add_argument("--model", action="append", help="only this model (repeatable)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)


def run_report(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None, out: TextIO | None = None
) -> int:
    """Fetch and print; the exit status (1: the report could not be fetched)."""
    env = os.environ if environ is None else environ
    stream = sys.stdout if out is None else out
    try:
        report = fetch(args.url, env.get(ADMIN_TOKEN_ENV), args.timeout)
    except CliError as exc:
        print(f"serving-proxy report: {exc}", file=sys.stderr)
        return 1
    if args.model:
        report = {
            **report,
            "models": {k: v for k, v in report["models"].items() if k in set(args.model)},
        }
    stream.write(render(report, args.format, args.csv_table))
    return 0
