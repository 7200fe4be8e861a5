"""Reporting end to end, on real loopback sockets.

Simulators with a known delay sit behind the proxy; a scripted run goes through, and the
test checks that Server-Timing agrees with the access-log line of the same request id, that
the Prometheus counts and sums are what was sent, that the report's percentiles are the
raw latencies' percentiles within HDR precision, that the `report` command prints the same,
and that two uvicorn workers scraped together count every request once.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from proxy import jsoncodec
from proxy.app import create_app
from proxy.cli.report import MODEL_COLUMNS, run_report
from proxy.config import ADMIN_TOKEN_ENV, parse_config
from sim.app import create_simulator_app
from tests.integration.proxy_process import ProxyProcess, free_port
from tests.secretwatch import secret
from tests.servers import LiveServer

pytestmark = pytest.mark.integration

TOKEN = secret("e2e-admin-token-0123456789abcdef01234")
LEGACY_DELAY_MS, SERVERLESS_DELAY_MS, JITTER_MS = 6.0, 2.0, 4.0
PER_SIDE = 60
SPLIT = {"content-type": "application/json; format=pandas-split"}
BODY = {"columns": ["a", "b"], "data": [[1, 2], [3, 4]]}
TIMING_RE = re.compile(r'^(\w+);dur=([0-9.]+)(?:;desc="([^"]*)")?$')


def parse_server_timing(value: str) -> dict[str, tuple[float, str | None]]:
    out = {}
    for part in value.split(","):
        match = TIMING_RE.match(part.strip())
        assert match, part
        out[match.group(1)] = (float(match.group(2)), match.group(3))
    return out


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(int(p * len(ordered) / 100 + 0.5), 1) - 1]


@pytest.fixture(scope="module")
def simulators() -> Iterator[tuple[str, str]]:
    with (
        LiveServer(create_simulator_app("legacy", seed=1)) as legacy,
        LiveServer(create_simulator_app("serverless", seed=2)) as serverless,
    ):
        for server, delay in ((legacy, LEGACY_DELAY_MS), (serverless, SERVERLESS_DELAY_MS)):
            r = httpx.put(
                server.url + "/_sim/faults", json={"delay_ms": delay, "jitter_ms": JITTER_MS}
            )
            assert r.status_code == 200
        yield legacy.url, serverless.url


def config_doc(legacy_url: str, serverless_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "backends": {"legacy": {"url": legacy_url}, "serverless": {"url": serverless_url}},
        # `iris` stays on legacy for 1.x URLs; migrated clients reach serverless directly.
        "models": {"iris": {"route": "legacy"}, "wine": {}},
        "client_key": {"header": "x-client-app"},
        **extra,
    }


@pytest.fixture
def proxy(
    simulators: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> Iterator[tuple[str, CollectorRegistry, pytest.LogCaptureFixture]]:
    registry = CollectorRegistry()
    config = parse_config(config_doc(*simulators), {ADMIN_TOKEN_ENV: TOKEN})
    caplog.set_level(logging.INFO, logger="serving_proxy.access")
    with LiveServer(create_app(config, registry=registry)) as server:
        yield server.url, registry, caplog


def access_lines(
    caplog: pytest.LogCaptureFixture, responses: list[httpx.Response]
) -> dict[str, dict[str, Any]]:
    """The access lines so far, by request id, once those of `responses` are there.

    The proxy writes a reply first and counts it just after (proxy/server.py), in the
    server's thread, so a line may trail its response by a moment: wait for it, bounded.
    """
    wanted = {r.headers["x-request-id"] for r in responses}
    deadline = time.monotonic() + 10
    while True:
        lines = [
            jsoncodec.loads(r.getMessage())
            for r in list(caplog.records)
            if r.name == "serving_proxy.access"
        ]
        by_id = {line["request_id"]: line for line in lines}
        if wanted <= by_id.keys() or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(by_id) == len(lines), "one line per request id"
    return by_id


def scripted_run(url: str) -> list[httpx.Response]:
    responses = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(PER_SIDE):
            responses.append(
                client.post(
                    "/model/iris/1/invocations",
                    json=BODY,
                    headers={
                        **SPLIT,
                        "x-client-app": f"legacy-app-{i % 2}",
                        "x-request-id": f"leg-{i}",
                    },
                )
            )
            responses.append(
                client.post(
                    "/serving-endpoints/iris/invocations",
                    json={"dataframe_split": BODY},
                    headers={"x-client-app": "migrated", "x-request-id": f"new-{i}"},
                )
            )
            # Translated: a legacy body to a serverless model.
            responses.append(
                client.post(
                    "/model/wine/1/invocations",
                    json=BODY,
                    headers={**SPLIT, "x-client-app": "wine-app", "x-request-id": f"wine-{i}"},
                )
            )
    assert all(r.status_code == 200 for r in responses)
    return responses


def test_server_timing_matches_the_access_log(proxy, simulators) -> None:
    url, _, caplog = proxy
    responses = scripted_run(url)
    trace = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vendor=1,other=x",
    }
    traced = httpx.post(url + "/model/wine/1/invocations", json=BODY, headers={**SPLIT, **trace})
    seen = httpx.get(simulators[1] + "/_sim/stats").json()["last_request"]["headers"]
    # The trace context reaches the model unchanged, beside the proxy's request id.
    assert {k: seen[k] for k in trace} == trace
    assert seen["x-request-id"] == traced.headers["x-request-id"]
    lines = access_lines(caplog, [*responses, traced])
    for response in [*responses, traced]:
        rid = response.headers["x-request-id"]
        timing = parse_server_timing(response.headers["server-timing"])
        line = lines[rid]
        assert line["status"] == response.status_code
        assert timing["upstream"] == (line["upstream_ms"], line["backend"])
        if line["translate_ms"]:
            assert timing["translate"][0] == line["translate_ms"]
        # The header is written as the response starts, the log line after it ends.
        assert 0 <= timing["proxy"][0] <= line["proxy_ms"] + 0.001
        assert line["total_ms"] >= line["upstream_ms"] + timing["proxy"][0] - 0.002
        assert line["outcome"] == "OK"
        assert line["client_key"]
        assert len(line["client_key"]) == 12
    assert lines["leg-0"]["backend"] == "legacy"
    assert "translate" not in parse_server_timing(responses[0].headers["server-timing"])
    assert lines["wine-0"]["legacy_format"] == "pandas-split"
    assert lines[traced.headers["x-request-id"]]["backend"] == "serverless"


def test_every_ending_gets_one_line_and_one_count(proxy, simulators) -> None:
    url, _registry, caplog = proxy
    with httpx.Client(base_url=url, timeout=10) as client:
        not_found = client.get("/nope")
        unknown = client.post("/model/nope/1/invocations", json=BODY, headers=SPLIT)
        too_large = client.post(
            "/model/wine/1/invocations", content=b"x" * (16 * 1024 * 1024 + 1), headers=SPLIT
        )
        bad = client.post("/model/wine/1/invocations", content=b"{", headers=SPLIT)
    lines = access_lines(caplog, [not_found, unknown, too_large, bad])
    got = {
        r.status_code: lines[r.headers["x-request-id"]]["outcome"]
        for r in (not_found, unknown, too_large, bad)
    }
    assert got == {404: got[404], 413: "PTL", 400: "BR"}
    assert {lines[r.headers["x-request-id"]]["outcome"] for r in (not_found, unknown)} == {
        "NRT",
        "NR",
    }
    for line in lines.values():
        assert set(line) >= {"time", "request_id", "model", "version", "client_key", "outcome"}
        assert "body" not in line
        assert "authorization" not in jsoncodec.dumps(line).decode().lower()
    total = sum(
        sample.value
        for family in text_string_to_metric_families(httpx.get(url + "/metrics").text)
        if family.name == "serving_proxy_requests"
        for sample in family.samples
        if sample.name == "serving_proxy_requests_total"
    )
    assert total == len(lines)


def test_upstream_failure_is_logged_and_counted(simulators, caplog) -> None:
    caplog.set_level(logging.INFO, logger="serving_proxy.access")
    closed = f"http://127.0.0.1:{free_port()}"
    registry = CollectorRegistry()
    config = parse_config(config_doc(closed, closed), {})
    with LiveServer(create_app(config, registry=registry)) as server:
        r = httpx.post(server.url + "/model/wine/1/invocations", json=BODY, headers=SPLIT)
    assert r.status_code == 503
    line = access_lines(caplog, [r])[r.headers["x-request-id"]]
    assert (line["outcome"], line["backend"], line["status"]) == ("UF", "serverless", 503)
    labels = {
        "model": "wine",
        "backend": "serverless",
        "legacy_format": "pandas-split",
        "status_class": "5xx",
        "outcome": "UF",
    }
    assert registry.get_sample_value("serving_proxy_requests_total", labels) == 1


def test_metrics_and_report_agree_with_what_was_sent(proxy, tmp_path: Path) -> None:
    url, registry, caplog = proxy
    lines = access_lines(caplog, scripted_run(url))
    by_backend: dict[str, list[float]] = {"legacy": [], "serverless": []}
    for line in lines.values():
        if line["model"] == "iris":
            by_backend[line["backend"]].append(line["total_ms"])
    assert {k: len(v) for k, v in by_backend.items()} == {
        "legacy": PER_SIDE,
        "serverless": PER_SIDE,
    }

    count = registry.get_sample_value
    hist = "serving_proxy_request_duration_seconds"
    legacy_labels = {
        "model": "iris",
        "backend": "legacy",
        "legacy_format": "none",
        "status_class": "2xx",
    }
    assert count(f"{hist}_count", legacy_labels) == PER_SIDE
    assert count(f"{hist}_sum", legacy_labels) == pytest.approx(
        sum(by_backend["legacy"]) / 1e3, rel=1e-3
    )
    new_labels = {**legacy_labels, "backend": "serverless", "legacy_format": "new"}
    assert count(f"{hist}_count", new_labels) == PER_SIDE
    wine = {"model": "wine", "backend": "serverless", "legacy_format": "pandas-split"}
    assert count(f"{hist}_count", {**wine, "status_class": "2xx"}) == PER_SIDE
    assert (
        count(
            "serving_proxy_translate_duration_seconds_count",
            {"model": "wine", "legacy_format": "pandas-split"},
        )
        == PER_SIDE
    )
    legacy_clients = {
        key: count("serving_proxy_legacy_requests_total", {"model": "iris", "client": key})
        for key in {lines[f"leg-{i}"]["client_key"] for i in range(2)}
    }
    assert sorted(legacy_clients.values()) == [PER_SIDE / 2, PER_SIDE / 2]

    report = httpx.get(url + "/admin/report", headers={"authorization": f"Bearer {TOKEN}"}).json()
    iris = report["models"]["iris"]
    for backend, raw in by_backend.items():
        got = iris["backends"][backend]
        assert got["requests"] == len(raw)
        for p in (50, 95, 99):
            expected = nearest_rank(raw, p)
            # HDR keeps 2 significant figures: never below the raw value, at most 1% above
            # (plus the access log's 1 µs rounding).
            assert expected - 0.002 <= got[f"p{p}"] <= expected * 1.01 + 0.002
    # The simulators slept at least their delay: a floor, not a timing assertion.
    assert iris["backends"]["legacy"]["p50"] >= LEGACY_DELAY_MS
    assert iris["backends"]["serverless"]["p50"] >= SERVERLESS_DELAY_MS
    assert iris["ratio"]["p99"] == pytest.approx(
        iris["backends"]["serverless"]["p99"] / iris["backends"]["legacy"]["p99"]
    )
    assert [c["requests"] for c in iris["clients"]] == [PER_SIDE / 2, PER_SIDE / 2]
    assert report["models"]["wine"]["clients"][0]["formats"] == {"pandas-split": PER_SIDE}

    def cli(fmt: str, table: str = "models") -> str:
        out = io.StringIO()
        args = argparse.Namespace(url=url, format=fmt, csv_table=table, model=None, timeout=10.0)
        assert run_report(args, {ADMIN_TOKEN_ENV: TOKEN}, out) == 0
        return out.getvalue()

    text = cli("table")
    assert "iris:" in text
    assert "serverless/legacy" in text
    assert "legacy clients" in text
    exported = jsoncodec.loads(cli("json"))
    rows = {row["model"]: row for row in exported["models"]}
    assert rows["iris"]["legacy_requests"] == PER_SIDE
    assert rows["iris"]["weight_percent"] == 0.0
    assert rows["wine"]["weight_percent"] == 100.0
    assert len(exported["legacy_clients"]) == 3
    table = list(csv.DictReader(io.StringIO(cli("csv"))))
    assert list(table[0]) == list(MODEL_COLUMNS)
    # The report is a live view: requests made by the report itself are not per model, so
    # the figures match between exports.
    assert float(table[0]["legacy_p99_ms"]) == rows["iris"]["legacy_p99_ms"]
    clients = list(csv.DictReader(io.StringIO(cli("csv", "clients"))))
    assert {c["model"] for c in clients} == {"iris", "wine"}


def test_admin_endpoints_need_the_token(proxy) -> None:
    url, _, _ = proxy
    for path in ("/admin/report", "/admin/dashboard", "/admin/dashboard.js"):
        assert httpx.get(url + path).status_code == 401
        assert httpx.get(url + path, headers={"authorization": "Bearer wrong"}).status_code == 401
    r = httpx.get(url + "/admin/dashboard", auth=("anyone", TOKEN))
    assert r.status_code == 200
    assert "<svg" not in r.text
    assert "dashboard.js" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert httpx.get(url + "/admin/dashboard").headers["www-authenticate"].startswith("Basic")
    args = argparse.Namespace(url=url, format="table", csv_table="models", model=None, timeout=5.0)
    assert run_report(args, {}, io.StringIO()) == 1


def wine_requests(report: dict[str, Any]) -> int:
    wine = report["models"].get("wine")
    return 0 if wine is None else int(wine["requests"])


def wine_scraped(text: str) -> int:
    return int(
        sum(
            s.value
            for f in text_string_to_metric_families(text)
            if f.name == "serving_proxy_requests"
            for s in f.samples
            if s.name == "serving_proxy_requests_total" and s.labels["model"] == "wine"
        )
    )


def consecutive(
    fetch: Callable[[], Any], count: Callable[[Any], int], expected: int, n: int = 6
) -> list[Any]:
    """`n` answers in a row whose count is `expected`, or the last `n` after 10 s."""
    answers: list[Any] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = fetch()
        answers = [*answers, answer][-n:] if count(answer) == expected else []
        if len(answers) == n:
            return answers
        if not answers:
            time.sleep(0.2)
    return [fetch() for _ in range(n)]


def test_two_workers_scraped_totals_equal_requests_sent(simulators, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    doc = config_doc(
        *simulators,
        server={"workers": 2, "graceful_shutdown_s": 1},
        reporting={"multiprocess_dir": str(metrics_dir)},
    )
    sent = 80
    admin = {"authorization": f"Bearer {TOKEN}"}
    with ProxyProcess(doc, tmp_path, env={ADMIN_TOKEN_ENV: TOKEN}) as proxy:
        # A new connection each time (Connection: close), so the kernel hands requests to
        # both workers, and so do the scrapes.
        with httpx.Client(base_url=proxy.url, headers={"connection": "close"}) as client:
            for i in range(sent):
                r = client.post(
                    "/model/wine/1/invocations",
                    json=BODY,
                    headers={**SPLIT, "x-client-app": f"app-{i % 4}"},
                )
                assert r.status_code == 200
            # Each worker counts a request just after its reply is written, and writes its
            # HDR statistics for the others within a second (the kernel may have given one
            # worker every invocation and the other only scrapes). So read until six
            # answers in a row (both workers, by the new connections) add up, bounded;
            # a worker that lost or doubled a count never gets there.
            scraped = consecutive(lambda: client.get("/metrics").text, wine_scraped, sent)
            reports = consecutive(
                lambda: client.get("/admin/report", headers=admin).json(),
                # ...and both workers have published their statistics file.
                lambda r: (
                    wine_requests(r) if len(list(metrics_dir.glob("stats_*.json"))) == 2 else -1
                ),
                sent,
            )
        writers = {p.name for p in metrics_dir.glob("counter_*.db")}
        stats_files = {p.name for p in metrics_dir.glob("stats_*.json")}
    for text in scraped:
        assert wine_scraped(text) == sent
        families = {f.name: f for f in text_string_to_metric_families(text)}
        count = sum(
            s.value
            for s in families["serving_proxy_request_duration_seconds"].samples
            if s.name.endswith("_count") and s.labels["model"] == "wine"
        )
        assert count == sent
        legacy = sum(
            s.value
            for s in families["serving_proxy_legacy_requests"].samples
            if s.name.endswith("_total")
        )
        assert legacy == sent
    assert len(writers) == 2, f"both workers served: {writers}"
    assert len(stats_files) == 2
    # Each worker removes its statistics file as it stops.
    assert not list(metrics_dir.glob("stats_*.json"))
    for report in reports:
        assert report["workers"] == 2
        assert wine_requests(report) == sent
        clients = report["models"]["wine"]["clients"]
        assert sorted(c["requests"] for c in clients) == [sent // 4] * 4
