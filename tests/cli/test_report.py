"""`serving-proxy report`: rendering of a real statistics snapshot, and fetch failures
against real loopback servers."""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import jsoncodec
from proxy.cli.client import CliError
from proxy.cli.main import build_parser
from proxy.cli.report import (
    CLIENT_COLUMNS,
    MODEL_COLUMNS,
    fetch,
    render_csv,
    render_json,
    render_table,
    run_report,
)
from proxy.config import ADMIN_TOKEN_ENV
from proxy.models import Backend
from proxy.telemetry.record import ExchangeRecord
from proxy.telemetry.stats import Rollout, Stats, StatsSettings
from tests.integration.proxy_process import free_port
from tests.servers import LiveServer

T0 = 1_800_000_000.0


def snapshot() -> dict[str, Any]:
    """A report as the proxy serves it, from real Stats fed with known latencies."""
    stats = Stats(
        StatsSettings(window_s=60, slot_s=10, client_top_n=2),
        rollout=lambda m: Rollout(25.0, "running") if m == "iris" else Rollout(),
    )
    for i in range(100):
        for backend, ms in ((Backend.LEGACY, 10.0 + i / 10), (Backend.SERVERLESS, 5.0 + i / 10)):
            r = ExchangeRecord(
                request_id=f"{i}", method="POST", path="/model/iris/1/invocations", started=0
            )
            r.model, r.backend, r.status = "iris", backend, 200 if i else 503
            r.total_s, r.upstream_s = ms / 1e3, ms / 1e3 - 0.0005
            if i % 25 == 0 and backend is Backend.SERVERLESS:
                r.retries, r.queue, r.queued_s = ("429",), "waited", 0.01
            stats.add(r, T0 + i / 10)
    for key, count in (("app-a", 5), ("app-b", 3), ("app-c", 1)):
        for _ in range(count):
            stats.inventory.saw("iris", key, "pandas-split", T0)
    for result in ("match",) * 9 + ("mismatch",):
        stats.add_parity("iris", result, T0)
    stats.add_event("iris", "probes_ok", T0)
    stats.note_rollout("wine", T0)
    return {"version": "test", **stats.snapshot(T0 + 11)}


def test_table_shows_each_figure() -> None:
    text = render_table(snapshot())
    assert "window 60 s (HDR, 2 figures)" in text
    assert "iris: 200 requests, error rate 1.00%, serverless weight 25%, rollout running" in text
    lines = text.splitlines()
    legacy = next(line for line in lines if line.strip().startswith("legacy "))
    assert legacy.split()[1:3] == ["100", "1.00%"]
    ratio = next(line for line in lines if "serverless/legacy" in line)
    assert ratio.split()[1].endswith("x")
    assert any(line.strip().startswith("proxy (own)") for line in lines)
    assert "shadow parity: 90.00% match of 10 compared (mismatch 1, error 0, dropped 0)" in text
    assert "app-a" in text
    assert "other" in text
    assert "wine: 0 requests, error rate n/a, serverless weight n/a, rollout n/a" in text
    assert "legacy clients: none seen" in text
    assert (
        "endpoint realities: retries 4, retry stops 0, holds 0, spill backs 0, queued 4, "
        "queue rejected 0, probes ok 1, probes failed 0" in text
    )


def test_json_and_csv_carry_the_same_figures() -> None:
    report = snapshot()
    exported = jsoncodec.loads(render_json(report))
    [iris, wine] = exported["models"]
    assert list(iris) == list(MODEL_COLUMNS)
    view = report["models"]["iris"]
    assert iris["legacy_p99_ms"] == view["backends"]["legacy"]["p99"]
    assert iris["ratio_p50"] == view["ratio"]["p50"]
    assert (iris["weight_percent"], iris["rollout_state"]) == (25.0, "running")
    assert (iris["parity_rate"], iris["parity_compared"], iris["parity_mismatch"]) == (0.9, 10, 1)
    assert (iris["legacy_client_keys"], iris["legacy_client_requests"]) == (2, 9)
    assert wine["weight_percent"] is None
    assert (iris["retries"], iris["queued"], iris["spill_backs"]) == (4, 4, 0)
    assert [c["client"] for c in exported["legacy_clients"]] == ["app-a", "app-b", "other"]
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert float(rows[0]["legacy_p99_ms"]) == iris["legacy_p99_ms"]
    assert rows[1]["weight_percent"] == ""  # n/a is an empty cell, not the text "None"
    clients = list(csv.DictReader(io.StringIO(render_csv(report, "clients"))))
    assert list(clients[0]) == list(CLIENT_COLUMNS)
    assert clients[0]["formats"] == "pandas-split:5"
    assert clients[0]["last_seen"] == "2027-01-15T08:00:00Z"


def test_the_table_says_what_it_merged_and_when_other_replicas_are_left_out() -> None:
    alone = render_table({**snapshot(), "replicas": 1, "workers": 1, "replicas_reachable": True})
    assert "replicas" not in alone.splitlines()[0]
    assert "THIS REPLICA ONLY" not in alone
    fleet = render_table({**snapshot(), "replicas": 3, "workers": 2})
    assert fleet.splitlines()[0].endswith("(HDR, 2 figures), 3 replicas, 2 workers")
    cut_off = render_table({**snapshot(), "replicas": 1, "replicas_reachable": False})
    assert cut_off.splitlines()[1].startswith("THIS REPLICA ONLY: the state store did not answer")


def test_table_with_no_models() -> None:
    report = {**snapshot(), "models": {}}
    assert "no models have been called yet" in render_table(report)


def answering(status: int, body: bytes, content_type: str = "application/json") -> Starlette:
    async def endpoint(request: Request) -> Response:
        return Response(body, status_code=status, media_type=content_type)

    return Starlette(routes=[Route("/admin/report", endpoint)])


@pytest.fixture
def report_server() -> Iterator[str]:
    body = jsoncodec.dumps(snapshot())

    async def endpoint(request: Request) -> Response:
        if request.headers.get("authorization") != "Bearer t0ken":
            return Response(b'{"error":"unauthorized"}', status_code=401)
        return Response(body, media_type="application/json")

    with LiveServer(Starlette(routes=[Route("/admin/report", endpoint)])) as server:
        yield server.url


@pytest.mark.parametrize(
    ("app", "message"),
    [
        pytest.param(answering(500, b"{}"), "answered 500", id="500"),
        pytest.param(answering(200, b"<html>", "text/html"), "did not answer JSON", id="html"),
        pytest.param(answering(200, b"[1]"), "did not answer a report", id="not-a-report"),
        pytest.param(answering(403, b"{}"), "set SERVING_PROXY_ADMIN_TOKEN", id="403"),
    ],
)
def test_fetch_says_what_went_wrong(app: Starlette, message: str) -> None:
    with LiveServer(app) as server, pytest.raises(CliError, match=message):
        fetch(server.url, None, timeout=5)


def test_fetch_from_a_closed_port() -> None:
    with pytest.raises(CliError, match="cannot reach"):
        fetch(f"http://127.0.0.1:{free_port()}", "t", timeout=2)


def test_cli_uses_the_token_from_the_environment(
    report_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(
        ["report", "--url", report_server, "--format", "csv", "--model", "iris"]
    )
    assert run_report(args, {ADMIN_TOKEN_ENV: "t0ken"}) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["model"] for r in rows] == ["iris"]
    assert run_report(args, {ADMIN_TOKEN_ENV: "wrong"}) == 1
    assert "refused the admin token: 401" in capsys.readouterr().err


def test_cli_formats() -> None:
    parser = build_parser()
    args = parser.parse_args(["report"])
    assert (args.url, args.format, args.csv_table) == ("http://127.0.0.1:8080", "table", "models")
    with pytest.raises(SystemExit):
        parser.parse_args(["report", "--format", "xml"])
    assert isinstance(parser.parse_args(["report", "--format", "json"]), argparse.Namespace)


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cells_that_could_start_a_formula_are_neutralised(start: str) -> None:
    """OWASP CSV injection: a client label can be a header value the client chose."""
    report = snapshot()
    evil = f'{start}HYPERLINK("http://x")'
    report["models"]["iris"]["clients"][0]["client"] = evil
    clients = list(csv.DictReader(io.StringIO(render_csv(report, "clients"))))
    assert clients[0]["client"] == "'" + evil
    assert clients[1]["client"] == "app-b"  # plain text stays as it is
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert rows[0]["requests"] == "200"  # numbers are never prefixed
