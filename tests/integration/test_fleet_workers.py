"""One host, two uvicorn workers, the default SQLite state file: the rollout gate window
any worker shows is both workers' traffic, each worker publishing as `<replica id>#<pid>`
(the same code path as replicas on Redis)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.app import window_publisher
from proxy.config import ADMIN_TOKEN_ENV, parse_config
from sim.app import create_simulator_app
from tests.integration.proxy_process import ProxyProcess
from tests.servers import LiveServer

pytestmark = pytest.mark.integration

TOKEN = "fleet-admin-token-0123456789abcdef0123"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
SPLIT = {"content-type": "application/json; format=pandas-split"}
BODY = {"columns": ["a", "b"], "data": [[1, 2], [3, 4]]}
SENT = 60
BATCHES = 3
DEADLINE_S = 15.0


def score(client: httpx.Client) -> int:
    return client.post("/model/wine/1/invocations", json=BODY, headers=SPLIT).status_code


@pytest.fixture(scope="module")
def simulators() -> Iterator[tuple[str, str]]:
    with (
        LiveServer(create_simulator_app("legacy", seed=1)) as legacy,
        LiveServer(create_simulator_app("serverless", seed=2)) as serverless,
    ):
        yield legacy.url, serverless.url


def test_the_publisher_id_names_the_worker_when_there_are_several() -> None:
    def cfg(workers: int) -> Any:
        return parse_config(
            {
                "backends": {"serverless": {"url": "http://127.0.0.1:1"}},
                "models": {"wine": {}},
                "server": {"workers": workers},
            },
            {},
        )

    assert window_publisher(cfg(1), "pod-a") == "pod-a"
    worker = window_publisher(cfg(2), "pod-a")
    assert worker.startswith("pod-a#")
    assert worker.removeprefix("pod-a#").isdigit()


def test_every_worker_shows_both_workers_window(
    simulators: tuple[str, str], tmp_path: Path
) -> None:
    legacy_url, serverless_url = simulators
    doc = {
        "backends": {"legacy": {"url": legacy_url}, "serverless": {"url": serverless_url}},
        "models": {"wine": {"serverless_percent": 100}},
        "state": str(tmp_path / "state.sqlite3"),
        "server": {"workers": 2, "graceful_shutdown_s": 1, "replica_id": "host-1"},
        "reporting": {"slot": "500ms", "multiprocess_dir": str(tmp_path / "metrics")},
    }
    # New connections, several at once, so the kernel hands requests to both workers; the
    # kernel alone decides, so a batch that reached one worker only is followed by another.
    sent = 0
    windows: list[dict[str, Any]] = []
    with (
        ProxyProcess(doc, tmp_path, env={ADMIN_TOKEN_ENV: TOKEN}) as proxy,
        httpx.Client(base_url=proxy.url, headers={"connection": "close"}) as client,
        ThreadPoolExecutor(8) as pool,
    ):
        for _ in range(BATCHES):
            statuses = list(pool.map(lambda _: score(client), range(SENT)))
            assert statuses == [200] * SENT
            sent += SENT
            # Each worker publishes a slot once it closed (500 ms), at its next poll; read
            # until eight answers in a row (from either worker) show every call.
            windows = []
            deadline = time.monotonic() + DEADLINE_S
            while len(windows) < 8:
                assert time.monotonic() < deadline, windows
                window = client.get("/admin/models/wine", headers=ADMIN).json()["window"]
                windows = [*windows, window] if window["serverless_calls"] == sent else []
                if not windows:
                    time.sleep(0.2)
            if len(windows[-1]["replicas"]) == 2:
                break
    publishers: set[str] = set()
    for window in windows:
        assert window["shared"] is True
        replicas = window["replicas"]
        assert sum(r["serverless_calls"] for r in replicas.values()) == sent
        assert all(name.startswith("host-1#") for name in replicas)
        publishers |= set(replicas)
    assert len(publishers) == 2, f"both workers served: {publishers}"
