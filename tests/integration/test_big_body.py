"""A 16 MB body translated off the event loop, on real sockets (issue: bounded work).

The real proxy process in front of two simulator processes: the big CSV's model has an
upstream of its own, so the time that simulator spends reading 16 MB is not charged to the
small requests. The small requests' p99 while the big body is in flight must stay within
50 ms of their p99 measured just before, and the proxy's RSS must grow by less than five
times the body.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.proxy_process import ChildServer, ProxyProcess

pytestmark = pytest.mark.integration

BODY_BYTES = 16 * 1000 * 1000
SMALL = b'{"columns": ["a", "b"], "data": [[1, 2.5], [3, 4.5]]}'
SPLIT = "application/json; format=pandas-split"
BASELINE_REQUESTS = 300
MIN_LOADED_REQUESTS = 100
BIG_TIMEOUT_S = 120.0


class SimulatorProcess(ChildServer):
    """`python -m sim simulate --kind serverless` on a loopback port."""

    name = "serverless-sim"
    ready_path = "/_sim/stats"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "sim",
            "simulate",
            "--kind",
            "serverless",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]


def _csv_body(size: int) -> bytes:
    # Ints, floats, text, booleans and NA: every column type of the split reader (§2.4).
    rng = random.Random(0)
    lines = ["n,x,label,flag,gap"]
    total = len(lines[0]) + 1
    while total < size:
        line = f"{rng.randint(0, 999)},{rng.random():.4f},w{rng.randint(0, 9)},true,NA"
        lines.append(line)
        total += len(line) + 1
    return ("\n".join(lines) + "\n").encode()


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")  # pragma: no cover


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _small(client: httpx.Client) -> float:
    t0 = time.perf_counter()
    r = client.post(
        "/model/small/Production/invocations", content=SMALL, headers={"content-type": SPLIT}
    )
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    return elapsed


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_small_requests_keep_their_latency_while_a_16_mb_csv_is_translated(
    tmp_path: Path,
) -> None:
    body = _csv_body(BODY_BYTES)
    with SimulatorProcess(tmp_path) as small_sim, SimulatorProcess(tmp_path) as big_sim:
        config: dict[str, Any] = {
            "backends": {
                "serverless": {
                    "url": small_sim.url,
                    "path": "/model-endpoint/{name}/{version}/invocations",
                }
            },
            "models": {
                "small": {"stages": {"Production": "1"}},
                "big": {
                    "stages": {"Production": "1"},
                    "csv_mode": "split",
                    "serverless": {"url": big_sim.url},
                },
            },
        }
        with (
            ProxyProcess(config, tmp_path) as proxy,
            httpx.Client(base_url=proxy.url, timeout=10.0) as client,
        ):
            assert proxy.process is not None
            pid = proxy.process.pid
            for _ in range(50):
                _small(client)
            baseline = [_small(client) for _ in range(BASELINE_REQUESTS)]
            rss_before = _rss_bytes(pid)

            big: dict[str, Any] = {}

            def send_big() -> None:
                with httpx.Client(base_url=proxy.url, timeout=BIG_TIMEOUT_S) as big_client:
                    big["reply"] = big_client.post(
                        "/model/big/Production/invocations",
                        content=body,
                        headers={"content-type": "text/csv"},
                    )

            sender = threading.Thread(target=send_big, name="big-body")
            sender.start()
            loaded: list[float] = []
            peak_rss = rss_before
            while sender.is_alive():
                loaded.append(_small(client))
                peak_rss = max(peak_rss, _rss_bytes(pid))
            sender.join()

    reply = big["reply"]
    assert reply.status_code == 200, reply.text[:500]
    assert len(loaded) >= MIN_LOADED_REQUESTS
    base_p99, loaded_p99 = _p99(baseline), _p99(loaded)
    growth = peak_rss - rss_before
    print(
        f"\nsmall p99: baseline {base_p99 * 1000:.1f} ms, with a {len(body) / 1e6:.1f} MB CSV "
        f"in flight {loaded_p99 * 1000:.1f} ms over {len(loaded)} requests; "
        f"max {max(loaded) * 1000:.1f} ms; RSS growth {growth / 1e6:.0f} MB"
    )
    assert loaded_p99 < base_p99 + 0.050
    assert growth < 5 * len(body), f"RSS grew {growth / len(body):.1f}x the body"
