"""The readiness probe, end to end: a real proxy on loopback, real simulators behind it,
the serverless one broken and healed with its fault knobs, and the real CLI.

A rollout whose probe fails does not step and `status` says why; once the endpoint
answers again it steps on a following tick. A manual raise of the weight runs the probe:
refused on failure, done with `--force`, done when healthy; lowering never probes. Every
probe is counted in `/metrics`, and none is counted as a client's request or in the
gates' window. Waits poll under a deadline; nothing asserts a duration.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import create_app
from proxy.cli.client import DEFAULT_TIMEOUT_S, AdminClient
from proxy.cli.cutover import probe_wait, run_admin_command
from proxy.cli.main import build_parser
from proxy.config import parse_config
from tests.secretwatch import secret
from tests.servers import LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("reset_simulators")]

TOKEN = secret("probe-admin-token-0123456789abcdef0123")
AUTH = {"authorization": f"Bearer {TOKEN}"}
SPLIT = '{"columns": ["a", "b"], "data": [[1, 2.5], [3, 4]]}'
SPLIT_CT = "application/json; format=pandas-split"
PROBE = {"content_type": SPLIT_CT, "body": SPLIT, "timeout_s": 5}
DEADLINE_S = 10.0


def proxy_config(serverless: LiveServer, legacy: LiveServer, rollout: dict[str, Any]) -> Any:
    return parse_config(
        {
            "backends": {"serverless": {"url": serverless.url}, "legacy": {"url": legacy.url}},
            "models": {
                "iris": {
                    "stages": {"Production": "3"},
                    "serverless_percent": 10,
                    # One attempt: the probe sees the endpoint's own answer at once.
                    "retry": {"on": []},
                    "rollout": {**rollout, "probe": PROBE},
                }
            },
            "admin": {"token_name": "ops"},
            "logging": {"access_log": False},
        },
        {"SERVING_PROXY_ADMIN_TOKEN": TOKEN},
    )


@pytest.fixture
def start(serverless: LiveServer, legacy: LiveServer) -> Iterator[Callable[..., LiveServer]]:
    started: list[LiveServer] = []

    def run(rollout: dict[str, Any]) -> LiveServer:
        server = LiveServer(create_app(proxy_config(serverless, legacy, rollout)), loop="asyncio")
        server.start()
        started.append(server)
        return server

    yield run
    for server in started:
        server.stop()


def faults(server: LiveServer, **knobs: Any) -> None:
    httpx.put(server.url + "/_sim/faults", json=knobs).raise_for_status()


def view(proxy: LiveServer) -> dict[str, Any]:
    r = httpx.get(proxy.url + "/admin/models/iris", headers=AUTH)
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def until(proxy: LiveServer, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        current = view(proxy)
        if done(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {DEADLINE_S} s: {current}")
        time.sleep(0.05)


def samples(proxy: LiveServer, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of one metric, by its labels."""
    text = httpx.get(proxy.url + "/metrics").text
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def probes(proxy: LiveServer, result: str) -> float:
    found = samples(proxy, "serving_proxy_probe_results_total")
    return found.get((("model", "iris"), ("result", result)), 0.0)


def cli(proxy: LiveServer, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    args = build_parser().parse_args(list(argv))
    environ = {"SERVING_PROXY_ADMIN_TOKEN": TOKEN, "SERVING_PROXY_URL": proxy.url}
    return run_admin_command(args, environ, out), out.getvalue()


def note(data: dict[str, Any]) -> str:
    evaluation = data["rollout"]["evaluation"]
    return "" if evaluation is None else str(evaluation["reason"])


def test_a_rollout_whose_probe_fails_holds_and_steps_once_the_endpoint_answers(
    start: Callable[..., LiveServer], serverless: LiveServer
) -> None:
    faults(serverless, status=503)
    proxy = start({"steps": [10, 50], "interval": "1s", "gates": {"error_rate": None}})
    held = until(proxy, lambda v: "probe failed" in note(v))
    assert held["serverless_percent"] == 10
    assert held["rollout"]["evaluation"]["action"] == "hold"
    assert note(held).startswith("probe failed: 503 ")
    assert held["rollout"]["probe"]["ok"] is False
    assert held["rollout"]["probe"]["status"] == 503
    assert held["window"]["serverless_calls"] == 0
    # The probe went the translating way, as a client of the model's legacy URL would.
    last = httpx.get(serverless.url + "/_sim/stats").json()["last_request"]
    assert last["headers"]["x-request-id"].startswith("probe-")
    assert '"dataframe_split"' in last["body"]
    # `serving-proxy status` says why the step is held.
    code, text = cli(proxy, "status")
    assert code == 0
    assert "probe failed: 503" in text
    assert " at 20" in text  # the probe's ISO time
    # No step was written while the probe failed.
    history = httpx.get(proxy.url + "/admin/models/iris/history", headers=AUTH).json()
    assert [e["action"] for e in history["history"]] == ["seed"]

    faults(serverless)
    stepped = until(proxy, lambda v: v["serverless_percent"] == 50)
    assert stepped["rollout"]["probe"]["ok"] is True
    assert stepped["rollout"]["probe"]["note"].startswith("probe ok at ")
    assert "probe failed" not in note(stepped)
    history = httpx.get(proxy.url + "/admin/models/iris/history", headers=AUTH).json()
    assert history["history"][0]["action"] == "advance"
    assert probes(proxy, "failed") >= 1
    assert probes(proxy, "ok") == 1
    # Probes are neither clients' requests nor samples of the gates' window.
    requests = samples(proxy, "serving_proxy_requests_total")
    assert [labels for labels in requests if ("model", "iris") in labels] == []


def test_a_manual_raise_runs_the_probe_and_refuses_on_failure_unless_forced(
    start: Callable[..., LiveServer], serverless: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # A long interval: only the operator moves the weight here.
    proxy = start({"steps": [10, 50, 100], "interval": "1h", "gates": {"error_rate": None}})
    faults(serverless, status=503)

    code, _ = cli(proxy, "cutover", "iris", "50")
    assert code == 1
    err = capsys.readouterr().err
    assert "answered 409: probe failed: 503 " in err
    assert "iris stays at 10%" in err
    assert view(proxy)["serverless_percent"] == 10

    code, _ = cli(proxy, "promote", "iris")
    assert code == 1
    assert "probe failed: 503 " in capsys.readouterr().err
    assert view(proxy)["serverless_percent"] == 10

    code, text = cli(proxy, "cutover", "iris", "50", "--force")
    assert code == 0
    assert text.startswith("probe failed: 503 ")
    assert "raised anyway (--force)" in text.splitlines()[0]
    assert view(proxy)["serverless_percent"] == 50
    failed = probes(proxy, "failed")
    assert failed == 3

    # Lowering, pausing and rolling back never probe.
    code, text = cli(proxy, "cutover", "iris", "20")
    assert code == 0
    assert "probe" not in text
    assert cli(proxy, "rollback", "iris")[0] == 0
    assert probes(proxy, "failed") == failed

    faults(serverless)
    code, text = cli(proxy, "cutover", "iris", "100")
    assert code == 0
    assert text.startswith("probe ok at ")
    assert view(proxy)["serverless_percent"] == 100
    assert probes(proxy, "ok") == 1


def test_the_api_takes_force_only_as_a_boolean(start: Callable[..., LiveServer]) -> None:
    proxy = start({"steps": [10, 50], "interval": "1h", "gates": {"error_rate": None}})
    r = httpx.put(
        proxy.url + "/admin/models/iris",
        headers=AUTH,
        json={"serverless_percent": 50, "force": "yes"},
    )
    assert r.status_code == 400
    assert r.json() == {"error": "bad_request", "message": "force must be true or false"}
    r = httpx.post(proxy.url + "/admin/models/iris/pause", headers=AUTH, json={"force": True})
    assert r.status_code == 400
    assert view(proxy)["serverless_percent"] == 10
    # Healthy: the reply says how the probe went.
    r = httpx.put(proxy.url + "/admin/models/iris", headers=AUTH, json={"serverless_percent": 50})
    assert r.status_code == 200
    assert r.json()["probe"]["ok"] is True
    assert r.json()["probe"]["forced"] is False


def test_without_timeout_the_cli_waits_as_long_as_the_probe_may_take(
    start: Callable[..., LiveServer],
) -> None:
    proxy = start({"steps": [10, 50], "interval": "1h", "gates": {"error_rate": None}})
    client = AdminClient(proxy.url, TOKEN)
    for argv in (["cutover", "iris", "50"], ["promote", "iris"]):
        waiting = probe_wait(client, build_parser().parse_args(argv))
        assert waiting.timeout == DEFAULT_TIMEOUT_S + PROBE["timeout_s"]
    told = build_parser().parse_args(["cutover", "iris", "50", "--timeout", "3"])
    assert probe_wait(client, told) is client
