"""The dashboard in a real headless Chromium, driven over the DevTools protocol.

A scripted run through real simulators fills the statistics; Chromium opens
`/admin/dashboard` with the admin token, and the test checks that the page loaded with no
console error, that every chart drew from the run's data, and saves a screenshot under
`artifacts/`. Skipped, saying why, only where no Chromium can be found.
"""

from __future__ import annotations

import base64
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from proxy import jsoncodec
from proxy.app import create_app
from proxy.config import ADMIN_TOKEN_ENV, parse_config
from sim.app import create_simulator_app
from tests.conftest import PROJECT_ROOT
from tests.secretwatch import secret
from tests.servers import LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.browser]

TOKEN = secret("dashboard-test-token-0123456789abcdef")
ARTIFACTS = PROJECT_ROOT / "artifacts"
START_TIMEOUT_S = 30.0
PAGE_TIMEOUT_S = 30.0
# The flags this machine needs (no sandbox as root, no GPU, no calls to Google's hosts).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1400,1800",
)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class DevTools:
    """The few DevTools protocol calls the test needs, over one page's websocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        # DevTools reads text frames only: a binary frame closes the connection.
        message = {"id": call_id, "method": method, "params": params}
        self.ws.send(jsoncodec.dumps(message).decode())
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while time.monotonic() < deadline:
            message = jsoncodec.loads(self.ws.recv(timeout=PAGE_TIMEOUT_S))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)
        raise TimeoutError(method)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def console_errors(self) -> list[str]:
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(str(params["exceptionDetails"]))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in (
                "error",
                "assert",
            ):
                errors.append(str(params.get("args")))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(f"{params['entry'].get('url')}: {params['entry']['text']}")
        return errors


@pytest.fixture
def chromium() -> Iterator[str]:
    """A running headless Chromium; yields its DevTools HTTP base URL."""
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no Chromium found: install Debian's `chromium` package (apt-get install chromium); "
            "scripts/test does so as root"
        )
    # Chromium's helper processes may still write to the profile as it exits: a leftover
    # file there is no failure of the dashboard.
    with tempfile.TemporaryDirectory(prefix="sp-chromium-", ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + START_TIMEOUT_S
            while not (port_file.exists() and port_file.read_text().strip()):
                if process.poll() is not None:
                    pytest.fail(f"chromium exited with {process.returncode} during start-up")
                if time.monotonic() > deadline:
                    pytest.fail("chromium wrote no DevToolsActivePort in time")
                time.sleep(0.05)
            port = port_file.read_text().split()[0]
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def scripted_run(proxy_url: str) -> int:
    """A cutover in three phases through the admin API: all legacy, half serverless,
    then a rollback; every request shadowed to the other side. Returns the requests sent."""
    body = {"columns": ["a", "b"], "data": [[1, 2], [3, 4]]}
    legacy_type = {"content-type": "application/json; format=pandas-split"}
    admin = {"authorization": f"Bearer {TOKEN}"}
    sent = 0
    with httpx.Client(base_url=proxy_url, timeout=10) as client:
        for phase in ("before", "half", "rolled-back"):
            if phase == "half":
                r = client.put(
                    "/admin/models/iris",
                    json={"serverless_percent": 50, "reason": "dashboard test"},
                    headers=admin,
                )
                assert r.status_code == 200, r.text
            elif phase == "rolled-back":
                r = client.post(
                    "/admin/models/iris/rollback", json={"reason": "dashboard test"}, headers=admin
                )
                assert r.status_code == 200, r.text
            for i in range(30):
                r = client.post(
                    "/model/iris/1/invocations",
                    json=body,
                    headers={**legacy_type, "x-client-app": f"batch-job-{i % 5}"},
                )
                assert r.status_code == 200
                sent += 1
            # Slots are 1 s: let each phase have its own point on the time axis.
            time.sleep(1.1)
    return sent


def test_dashboard_draws_a_scripted_run_without_console_errors(chromium: str) -> None:
    legacy = create_simulator_app("legacy")
    serverless = create_simulator_app("serverless")
    with LiveServer(legacy) as legacy_server, LiveServer(serverless) as serverless_server:
        for server, delay in ((legacy_server, 12.0), (serverless_server, 4.0)):
            httpx.put(server.url + "/_sim/faults", json={"delay_ms": delay, "jitter_ms": 6.0})
        config = parse_config(
            {
                "backends": {
                    "legacy": {"url": legacy_server.url},
                    "serverless": {"url": serverless_server.url},
                },
                "models": {"iris": {"serverless_percent": 0, "shadow_percent": 100}},
                "client_key": {"header": "x-client-app"},
                "reporting": {"slot": "1s", "window": "60s", "show_client_header": True},
                "server": {"replica_id": "dash-1"},
            },
            {ADMIN_TOKEN_ENV: TOKEN},
        )
        with LiveServer(create_app(config)) as proxy:
            sent = scripted_run(proxy.url)
            page = httpx.put(f"{chromium}/json/new?about:blank", timeout=10).json()
            with connect(page["webSocketDebuggerUrl"], max_size=None, compression=None) as ws:
                tools = DevTools(ws)
                for domain in ("Page", "Runtime", "Log", "Network"):
                    tools.call(f"{domain}.enable")
                # What a browser sends once a person has typed the token into its prompt.
                basic = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
                tools.call(
                    "Network.setExtraHTTPHeaders", headers={"authorization": f"Basic {basic}"}
                )
                tools.call("Page.navigate", url=f"{proxy.url}/admin/dashboard?refresh=1")
                deadline = time.monotonic() + PAGE_TIMEOUT_S
                state = None
                while time.monotonic() < deadline:
                    state = tools.evaluate("document.body && document.body.dataset.state")
                    refreshes = tools.evaluate("Number(document.body.dataset.refreshes || 0)")
                    if state == "error" or (state == "ready" and refreshes >= 2):
                        break
                    time.sleep(0.2)
                assert state == "ready", tools.evaluate(
                    "document.getElementById('error').textContent"
                )
                charts = tools.evaluate(
                    "Object.fromEntries([...document.querySelectorAll('svg[data-chart]')]"
                    ".map(s => [s.dataset.chart, Number(s.dataset.points)]))"
                )
                empties = tools.evaluate(
                    "[...document.querySelectorAll('div.empty')].map(d => d.dataset.chart)"
                )
                summary = tools.evaluate(
                    "[...document.querySelectorAll('#summary tbody td')].map(td => td.textContent)"
                )
                clients = tools.evaluate(
                    "[...document.querySelectorAll('table.clients td:first-child')]"
                    ".map(td => td.textContent)"
                )
                gate_window = tools.evaluate(
                    "[...document.querySelectorAll('table.gate-window tr')]"
                    ".map(tr => [...tr.children].map(c => c.textContent))"
                )
                rollbacks = tools.evaluate(
                    "document.querySelectorAll('svg[data-chart=weight] polygon.rollback').length"
                )
                shot = tools.call(
                    "Page.captureScreenshot", format="png", captureBeyondViewport=True
                )
                ARTIFACTS.mkdir(exist_ok=True)
                path = ARTIFACTS / "dashboard.png"
                path.write_bytes(base64.b64decode(shot["data"]))
                errors = tools.console_errors()
    assert errors == []
    # The latency chart holds p50/p99 points of both sides; the histogram both sides' bars.
    assert charts["latency"] >= 4
    assert charts["histogram"] >= 2
    assert charts["weight"] >= 3  # 0 %, 50 %, back to 0 %
    assert rollbacks >= 1
    assert charts["parity"] >= 1
    assert empties == []
    assert summary[0] == "iris"
    assert summary[1] == str(sent)
    assert sorted(clients) == [f"batch-job-{i}" for i in range(5)]
    # The gate window over the fleet (one replica here): since the rollback, 30 legacy
    # answers, each shadowed to serverless.
    assert [row[0] for row in gate_window[1:]] == ["fleet", "dash-1"]
    assert gate_window[1][4] == "30"
    assert gate_window[1][1] == "30"
    assert path.stat().st_size > 10_000
    assert os.access(path, os.R_OK)
