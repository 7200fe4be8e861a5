"""A whole migration, end to end: real proxy processes, real simulators, the real CLI.

The cutover as an operator runs it: start at 0% with shadowing, read the parity, step up, watch an
injected fault roll it back, finish at 100%, keep the state across a restart, and share
it between two replicas through a real redis-server. Every wait polls under a deadline
and every request loop is bounded; nothing asserts a duration.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.routing import bucket_of, threshold
from tests.integration.proxy_process import PROJECT_ROOT, ProxyProcess
from tests.secretwatch import secret
from tests.servers import LiveServer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("reset_simulators")]

TOKEN = secret("e2e-admin-token-0123456789abcdef01234")
ENV = {"SERVING_PROXY_ADMIN_TOKEN": TOKEN}
AUTH = {"authorization": f"Bearer {TOKEN}"}
SPLIT = b'{"columns": ["a", "b"], "data": [[1, 2.5], [3, 4]]}'
HEADERS = {"content-type": "application/json; format=pandas-split"}
DEADLINE_S = 20.0


def config(serverless: LiveServer, legacy: LiveServer, **iris: Any) -> dict[str, Any]:
    return {
        "backends": {"serverless": {"url": serverless.url}, "legacy": {"url": legacy.url}},
        "models": {"iris": iris},
        "client_key": {"header": "X-Client-Id"},
        "admin": {"token_name": "e2e"},
        "logging": {"access_log": False},
    }


def faults(server: LiveServer, **knobs: Any) -> None:
    httpx.put(server.url + "/_sim/faults", json=knobs).raise_for_status()


def total(server: LiveServer) -> int:
    count: int = httpx.get(server.url + "/_sim/stats").json()["total"]
    return count


def model(proxy: ProxyProcess) -> dict[str, Any]:
    r = httpx.get(proxy.url + "/admin/models/iris", headers=AUTH)
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def drive(proxy: ProxyProcess, clients: range) -> list[httpx.Response]:
    with httpx.Client(base_url=proxy.url) as client:
        return [
            client.post(
                "/model/iris/1/invocations",
                content=SPLIT,
                headers={**HEADERS, "x-client-id": f"client-{i}"},
            )
            for i in clients
        ]


def until(
    proxy: ProxyProcess,
    done: Callable[[dict[str, Any]], bool],
    traffic: range | None = None,
) -> dict[str, Any]:
    """Poll the model view (driving `traffic` between polls) until `done` or the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        view = model(proxy)
        if done(view) or time.monotonic() > deadline:
            return view
        if traffic is not None:
            drive(proxy, traffic)
        time.sleep(0.05)


def cli(proxy: ProxyProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **ENV, "SERVING_PROXY_URL": proxy.url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_whole_migration(serverless: LiveServer, legacy: LiveServer, tmp_path: Path) -> None:
    doc = config(
        serverless,
        legacy,
        serverless_percent=0,
        shadow_percent=100,
        rollout={
            "steps": [25, 50, 100],
            "interval": "1s",
            "window": "3s",
            "gates": {
                "error_rate": {"max": 0.2, "min_samples": 5},
                "parity": {"min": 0.9, "min_samples": 5},
            },
        },
    )
    with ProxyProcess(doc, tmp_path, env=ENV) as proxy:
        # 0%, shadowing: every client is answered by legacy, every request is mirrored.
        assert cli(proxy, "pause", "iris", "--reason", "read parity first").returncode == 0
        answers = drive(proxy, range(10))
        assert {r.status_code for r in answers} == {200}
        assert {r.content for r in answers} == {b"[3.5, 7.0]"}
        assert total(legacy) == 10
        view = until(proxy, lambda v: v["parity"]["compared"] >= 10)
        assert view["parity"]["match"] == 10
        status = cli(proxy, "status")
        assert status.returncode == 0, status.stderr
        assert "iris" in status.stdout
        assert "1.0000 of 10" in status.stdout

        # Step up by hand, then let the gates take it on.
        out = cli(proxy, "cutover", "iris", "25", "--reason", "parity is 1.0")
        assert out.returncode == 0, out.stderr
        assert model(proxy)["serverless_percent"] == 25
        assert cli(proxy, "resume", "iris").returncode == 0
        view = until(proxy, lambda v: v["serverless_percent"] >= 50, range(20))
        assert view["serverless_percent"] == 50

        # A fault on the serverless side: the gates roll it back within a window.
        faults(serverless, status=503)
        view = until(proxy, lambda v: v["serverless_percent"] == 0, range(20))
        assert (view["serverless_percent"], view["rollout"]["status"]) == (0, "rolled_back")
        # Both gates see the fault (served calls fail; shadowed ones no longer match):
        # whichever reaches its min_samples first names it.
        reason = view["rollout"]["reason"]
        assert reason.startswith("gate failed: ")
        assert "error_rate" in reason or "parity" in reason
        faults(serverless)

        # Fixed: promote to the end by hand.
        for step in (25, 50, 100):
            out = cli(proxy, "promote", "iris")
            assert out.returncode == 0, out.stderr
            assert model(proxy)["serverless_percent"] == step
        history = cli(proxy, "history", "iris", "--limit", "50")
        assert "ROLLBACK" in history.stdout
        # Each line says which replica made the change (here, the only one).
        here = httpx.get(proxy.url + "/admin/replicas", headers=AUTH).json()["replica_id"]
        rollback = next(line for line in history.stdout.splitlines() if "ROLLBACK" in line)
        assert f"[on {here}]" in rollback
        answers = drive(proxy, range(5))
        assert {r.content for r in answers} == {b"[3.5, 7.0]"}

    # A restart keeps the state the run reached, not the config's 0%.
    with ProxyProcess(doc, tmp_path, env=ENV) as again:
        view = model(again)
        assert view["serverless_percent"] == 100
        actions = [
            e["action"]
            for e in httpx.get(
                again.url + "/admin/models/iris/history?limit=100", headers=AUTH
            ).json()["history"]
        ]
        assert actions.count("rollback") == 1
        assert actions[-1] == "seed"


def test_a_thin_window_holds_and_says_why(
    serverless: LiveServer, legacy: LiveServer, tmp_path: Path
) -> None:
    doc = config(
        serverless,
        legacy,
        serverless_percent=25,
        rollout={
            "steps": [25, 50],
            "interval": "1s",
            "gates": {"error_rate": {"max": 0.01, "min_samples": 1000}},
        },
    )
    faults(serverless, status=503)
    with ProxyProcess(doc, tmp_path, env=ENV) as proxy:
        view = until(
            proxy,
            lambda v: (v["rollout"]["evaluation"] or {}).get("action") == "hold",
            range(12),
        )
        assert view["serverless_percent"] == 25
        assert "error_rate:" in view["rollout"]["evaluation"]["reason"]
        assert "of 1000 samples" in view["rollout"]["evaluation"]["reason"]


def test_a_slow_serverless_side_is_rolled_back(
    serverless: LiveServer, legacy: LiveServer, tmp_path: Path
) -> None:
    doc = config(
        serverless,
        legacy,
        serverless_percent=50,
        shadow_percent=100,
        rollout={
            "steps": [50, 100],
            "interval": "1h",
            "window": "5s",
            "on_failure": "last_good",
            "gates": {
                "error_rate": None,
                "p99_ratio": {"max": 3, "min_samples": 5, "floor_ms": 50},
            },
        },
    )
    faults(serverless, delay_ms=300)
    with ProxyProcess(doc, tmp_path, env=ENV) as proxy:
        view = until(proxy, lambda v: v["serverless_percent"] == 0, range(8))
    assert view["rollout"]["status"] == "rolled_back"
    assert "p99" in view["rollout"]["reason"]


def test_sticky_clients_follow_the_stable_hash(
    serverless: LiveServer, legacy: LiveServer, tmp_path: Path
) -> None:
    with ProxyProcess(config(serverless, legacy, serverless_percent=30), tmp_path, env=ENV) as p:
        clients = range(200)
        drive(p, clients)
        expected = sum(bucket_of(f"client-{i}") < threshold(30) for i in clients)
        assert total(serverless) == expected
        assert total(legacy) == 200 - expected
        drive(p, clients)  # the same clients again: the same backends
        assert total(serverless) == 2 * expected


@pytest.mark.redis
def test_two_replicas_share_one_state_through_redis(
    serverless: LiveServer, legacy: LiveServer, tmp_path: Path, redis_url: str
) -> None:
    doc = {**config(serverless, legacy, serverless_percent=10), "state": redis_url}
    with ProxyProcess(doc, tmp_path, env=ENV) as a, ProxyProcess(doc, tmp_path, env=ENV) as b:
        r = httpx.put(a.url + "/admin/models/iris", headers=AUTH, json={"serverless_percent": 75})
        assert r.status_code == 200
        changed = time.monotonic()
        view = until(b, lambda v: v["serverless_percent"] == 75)
        seen = time.monotonic() - changed
        assert view["serverless_percent"] == 75, f"replica b still at {view['serverless_percent']}"
        print(f"replica b saw the change after {seen * 1000:.0f} ms (poll every 250 ms)")
        out = cli(b, "rollback", "iris", "--reason", "from b")
        assert out.returncode == 0, out.stderr
        assert until(a, lambda v: v["serverless_percent"] == 0)["serverless_percent"] == 0
        # Both decide alike for the same clients: the bucket is the same everywhere.
        httpx.put(a.url + "/admin/models/iris", headers=AUTH, json={"serverless_percent": 40})
        until(b, lambda v: v["serverless_percent"] == 40)
        before = total(serverless)
        drive(a, range(50))
        drive(b, range(50))
        expected = sum(bucket_of(f"client-{i}") < threshold(40) for i in range(50))
        assert total(serverless) - before == 2 * expected
    # A replica started later (a restart) finds the state in Redis.
    with ProxyProcess(doc, tmp_path, env=ENV) as c:
        assert model(c)["serverless_percent"] == 40
