"""What gradual cutover costs, measured in one run on loopback.

    python benchmarks/routing.py [--seconds 5] [--concurrency 16]

Prints:
  1. the routing decision (client key, override check, stable bucket, weight) in µs per
     request, through `Cutover.decide` on a live table, and its parts;
  2. throughput of the proxy answering from an instant legacy backend with no shadowing
     vs shadowing 100% to an instant serverless backend (ratio: how much mirroring costs),
     with the shadow calls in the worker process (`shadow.isolation: process`, the
     default) and inline on the proxy's event loop (`isolation: inline`); the shadow
     results (how many were compared, how many dropped); and on Linux the CPU time per
     request of the proxy and of its worker (from /proc), which shared-machine noise
     moves far less than throughput: what shadowing costs where no core is spare;
  3. primary p50/p99 with no shadowing vs shadowing 100% to a serverless simulator that
     takes 2 s (ratio: does a slow shadow reach the primary path at all), and the same
     ratios between two identical proxies without shadowing: the noise to read them by.

The instant backends (`benchmarks/instant.py`) answer with replies recorded from the
simulators at start: a simulator costs about as much CPU per request as the proxy, which
on two cores would come out of the cells being compared.

Cells 2 and 3 run in --rounds interleaved rounds; each figure is the median round and
each ratio the median of the rounds' own ratios (both cells of a round measured back to
back), since one round on this shared machine can be far luckier or slower than the rest.
Every server is a child process on 127.0.0.1 (the proxy through its real CLI), stopped by
its PID; every cell is bounded by --seconds. The load comes from wrk when it is installed
(else an aiohttp loop, which competes with the proxy for the cores and understates what
shadowing costs). Figures, not assertions: pytest never times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import timeit
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import Child, CpuMeter, child, free_port, load_wrk  # noqa: E402
from proxy.protocol.legacy import parse_request  # noqa: E402
from proxy.protocol.translate import legacy_to_v2  # noqa: E402

BODY = b'{"columns": ["a", "b", "c", "d"], "data": [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4]]}'
CONTENT_TYPE = "application/json; format=pandas-split"
# Slots for the instant shadow backend: enough that no job is dropped for want of a slot
# while the proxy keeps up, so "100%" means every request mirrored (the default 16 drops
# some at 16 clients). A worker that falls behind a saturated proxy still fills them, and
# drops the excess: the shadow results say how many. The 2 s backend keeps the default:
# there, dropping is the point.
SHADOW_SLOTS = 512
# Where the proxy sends iris's serverless calls with the default path template.
SERVERLESS_PATH = "/model-endpoint/iris/1/invocations"


@contextmanager
def simulator(kind: str, delay_ms: float = 0.0) -> Iterator[str]:
    port = free_port()
    args = ["-m", "sim", "simulate", "--kind", kind, "--port", str(port)]
    if delay_ms:
        args += ["--delay-ms", str(delay_ms)]
    # A delayed simulator delays /ping too: only wait for it to accept connections.
    with child([sys.executable, *args], port, ready=None if delay_ms else "/ping") as server:
        yield server.url


@contextmanager
def instant(
    workdir: Path, simulator_url: str, path: str, content_type: str, body: bytes
) -> Iterator[str]:
    """An instant backend answering what the simulator at `simulator_url` answers to one
    request (`benchmarks/instant.py`)."""
    request = urllib.request.Request(
        simulator_url + path, data=body, headers={"content-type": content_type}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        status, reply_type, reply = (
            response.status,
            response.headers["content-type"],
            response.read(),
        )
    port = free_port()
    body_file = workdir / f"instant-{port}.body"
    body_file.write_bytes(reply)
    args = [sys.executable, str(ROOT / "benchmarks" / "instant.py"), str(port), str(status)]
    with child([*args, reply_type, str(body_file)], port) as server:
        yield server.url


def serverless_request() -> tuple[str, bytes]:
    """BODY as the proxy sends it to the serverless side (protocols.md §2)."""
    v2 = legacy_to_v2(parse_request(CONTENT_TYPE, BODY, accept_v2_bodies=False))
    return v2.content_type, v2.body


@contextmanager
def proxy(
    workdir: Path,
    legacy: str,
    serverless: str,
    shadow_percent: float,
    slots: int | None = None,
    isolation: str = "process",
) -> Iterator[Child]:
    port = free_port()
    doc: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "backends": {"legacy": {"url": legacy}, "serverless": {"url": serverless}},
        "models": {"iris": {"serverless_percent": 0, "shadow_percent": shadow_percent}},
        "logging": {"access_log": False, "level": "warning"},
        "state": str(workdir / f"state-{port}.sqlite3"),
        "shadow": {"isolation": isolation},
    }
    if slots is not None:
        doc["shadow"]["max_concurrency"] = slots
    path = workdir / f"proxy-{port}.yaml"
    path.write_text(yaml.safe_dump(doc))
    serve = [sys.executable, "-m", "proxy", "serve", "--config", str(path)]
    with child(serve, port, ready="/readyz") as server:
        yield server


async def load(url: str, concurrency: int, seconds: float, meter: CpuMeter) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(stop: float, i: int) -> None:
            nonlocal errors
            headers = {"content-type": CONTENT_TYPE, "x-client-id": f"bench-{i}"}
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                async with session.post(url, data=BODY, headers=headers) as r:
                    await r.read()
                    errors += r.status != 200
                latencies.append(time.perf_counter() - t0)

        warm = time.perf_counter() + min(1.0, seconds / 4)
        await asyncio.gather(*(worker(warm, i) for i in range(concurrency)))
        latencies.clear()
        errors = 0
        meter.start()
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + seconds, i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
        meter.stop()
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
        "errors": float(errors),
        "cpu_us": meter.per_request(len(latencies)),
        "child_cpu_us": meter.children_per_request(len(latencies)),
    }


def decision_cost() -> None:
    from proxy.config import parse_config
    from proxy.cutover import Cutover
    from proxy.models import ModelRef
    from proxy.routing import ClientKey, bucket_of, client_key, decide

    config = parse_config(
        {
            "backends": {
                "legacy": {"url": "http://127.0.0.1:1"},
                "serverless": {"url": "http://127.0.0.1:2"},
            },
            "models": {"iris": {"serverless_percent": 25, "shadow_percent": 5}},
            "client_key": {"header": "X-Client-Id"},
            "route_override": {"clients": ["qa"]},
        },
        {},
    )
    cutover = Cutover(config, rng=random.Random(1))
    ref = ModelRef("iris", "1", "1", "iris")
    requests = [
        [
            ("content-type", CONTENT_TYPE),
            ("user-agent", "python-requests/2.31"),
            ("x-client-id", f"client-{i}"),
        ]
        for i in range(1000)
    ]
    n = 200_000

    def per_request(stmt: Any) -> float:
        best = min(timeit.repeat(stmt, number=n // 1000, repeat=5))
        return best / (n // 1000) / len(requests) * 1e6

    raw = [[(k.encode(), v.encode()) for k, v in h] for h in requests]
    full = per_request(
        lambda: [
            cutover.decide(ref, client_key(r, "10.0.0.1", config.client_key), h)
            for r, h in zip(raw, requests, strict=True)
        ]
    )
    keys = [ClientKey("header", f"client-{i}") for i in range(1000)]
    rng = random.Random(2)
    pure = per_request(lambda: [decide(cutover.table, ref, k, rng) for k in keys])
    bucket = per_request(lambda: [bucket_of(k.value) for k in keys])
    read = per_request(lambda: [client_key(r, "10.0.0.1", config.client_key) for r in raw])
    print("1. routing decision, per request (best of 5):")
    print(f"   Cutover.decide (key from headers, override check, bucket, weight): {full:.2f} µs")
    print(
        f"   routing.decide on a ready key: {pure:.2f} µs;  bucket_of: {bucket:.2f} µs;  "
        f"client_key from 3 headers: {read:.2f} µs"
    )


def shadow_results(url: str) -> dict[str, float]:
    """The proxy's shadow comparisons so far, by result, from its /metrics."""
    prefix = "serving_proxy_shadow_comparisons_total{"
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            labels, _, value = line[len(prefix) :].partition("} ")
            result = labels.split('result="', 1)[1].split('"', 1)[0]
            counts[result] = counts.get(result, 0.0) + float(value)
    return counts


def median_cell(cells: list[dict[str, float]]) -> dict[str, float]:
    """The median round per figure: the machine is shared and one round can be lucky or
    disturbed, so neither the best nor the worst round speaks for the cell."""
    return {
        "rps": statistics.median(c["rps"] for c in cells),
        "p50_ms": statistics.median(c["p50_ms"] for c in cells),
        "p99_ms": statistics.median(c["p99_ms"] for c in cells),
        "cpu_us": statistics.median(c["cpu_us"] for c in cells),
        "child_cpu_us": statistics.median(c["child_cpu_us"] for c in cells),
        "errors": sum(c["errors"] for c in cells),
    }


def round_ratios(
    over: list[dict[str, float]], under: list[dict[str, float]], key: str
) -> list[float]:
    """`key` of each round of `over` divided by the same round of `under` (measured back to
    back, so drift falls on both)."""
    return [o[key] / u[key] for o, u in zip(over, under, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=5, help="cells are interleaved")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--client",
        choices=["auto", "wrk", "aiohttp"],
        default="auto",
        help="load generator: wrk when installed (apt-get install wrk), else an aiohttp loop",
    )
    args = parser.parse_args()
    # A Python client spends about as much CPU per request as the proxy does, on the same
    # two cores: wrk leaves the machine to the servers, so the ratios measure the proxy.
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))
    print(f"load generator: {'wrk' if use_wrk else 'aiohttp client'}; {os.cpu_count()} cores")
    decision_cost()
    path = "/model/iris/1/invocations"
    # "again": a second proxy without shadowing, the same as "base": how far two identical
    # cells of the same rounds differ is the noise the other ratios are read against.
    names = ("base", "mirrored", "inline", "slow", "again")
    cells: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        work = Path(tmp)
        with (
            simulator("legacy") as legacy_sim,
            simulator("serverless") as serverless_sim,
            instant(work, legacy_sim, path, CONTENT_TYPE, BODY) as legacy,
            instant(work, serverless_sim, SERVERLESS_PATH, *serverless_request()) as fast,
            simulator("serverless", delay_ms=2000) as slow,
            proxy(work, legacy, fast, 0) as base_proxy,
            proxy(work, legacy, fast, 100, SHADOW_SLOTS) as mirrored_proxy,
            proxy(work, legacy, fast, 100, SHADOW_SLOTS, "inline") as inline_proxy,
            proxy(work, legacy, slow, 100) as slow_proxy,
            proxy(work, legacy, fast, 0) as again_proxy,
        ):
            proxies = (base_proxy, mirrored_proxy, inline_proxy, slow_proxy, again_proxy)
            servers = dict(zip(names, proxies, strict=True))
            # Interleaved rounds, so a burst of other load on the machine hits every cell.
            for _ in range(args.rounds):
                for name, server in servers.items():
                    meter = CpuMeter(server.pid)
                    url = server.url + path
                    cells[name].append(
                        load_wrk(
                            url, BODY, CONTENT_TYPE, args.concurrency, args.seconds, meter, tmp
                        )
                        if use_wrk
                        else asyncio.run(load(url, args.concurrency, args.seconds, meter))
                    )
            mirrored_results = shadow_results(mirrored_proxy.url)
            inline_results = shadow_results(inline_proxy.url)
            slow_results = shadow_results(slow_proxy.url)
    base, mirrored = median_cell(cells["base"]), median_cell(cells["mirrored"])
    inline, slow_shadow = median_cell(cells["inline"]), median_cell(cells["slow"])
    mirror_ratios = round_ratios(cells["mirrored"], cells["base"], "rps")
    inline_ratios = round_ratios(cells["inline"], cells["base"], "rps")
    p99_ratios = round_ratios(cells["slow"], cells["base"], "p99_ms")
    print(
        f"2. throughput, {args.concurrency} concurrent clients, median of {args.rounds} "
        f"interleaved {args.seconds:g} s rounds (primary: legacy, bytes passed through; "
        "instant backends):"
    )
    print(f"   no shadow:                              {base['rps']:8.0f} req/s")
    for label, cell, ratios in (
        ("shadow 100%, in the worker (default):", mirrored, mirror_ratios),
        ("shadow 100%, inline (isolation: inline):", inline, inline_ratios),
    ):
        ratio = statistics.median(ratios)
        print(
            f"   {label:<40}{cell['rps']:8.0f} req/s   ratio {ratio:.2f} (cost "
            f"{100 * (1 - ratio):.0f}%; median of the rounds' ratios "
            f"{', '.join(f'{r:.2f}' for r in ratios)})"
        )
    print(
        f"   shadow results (warm-ups included): worker: {_results(mirrored_results)}; "
        f"inline: {_results(inline_results)}"
    )
    if base["cpu_us"] == base["cpu_us"]:  # NaN off Linux
        worker_total = mirrored["cpu_us"] + mirrored["child_cpu_us"]
        print(
            f"   CPU per request: no shadow {base['cpu_us']:.0f} µs; worker: proxy "
            f"{mirrored['cpu_us']:.0f} + worker {mirrored['child_cpu_us']:.0f} = "
            f"{worker_total:.0f} µs; inline {inline['cpu_us']:.0f} µs"
        )
        print(
            "   a shadow call's CPU, as a share of a primary request's: worker "
            f"{(worker_total - base['cpu_us']) / base['cpu_us']:.2f} (on the proxy's own "
            f"loop {(mirrored['cpu_us'] - base['cpu_us']) / base['cpu_us']:.2f}), inline "
            f"{(inline['cpu_us'] - base['cpu_us']) / base['cpu_us']:.2f}: where no core is "
            "spare, throughput falls by that share over one plus it"
        )
    print("3. primary latency with a shadow backend that takes 2 s (same rounds):")
    print(f"   no shadow:          p50 {base['p50_ms']:6.2f} ms   p99 {base['p99_ms']:6.2f} ms")
    print(
        f"   shadow 100% (2 s):  p50 {slow_shadow['p50_ms']:6.2f} ms   "
        f"p99 {slow_shadow['p99_ms']:6.2f} ms   p99 ratio "
        f"{statistics.median(p99_ratios):.2f} (per round "
        f"{', '.join(f'{r:.2f}' for r in p99_ratios)})"
    )
    print(f"   shadow results of the 2 s backend: {_results(slow_results)}")
    again_rps = statistics.median(round_ratios(cells["again"], cells["base"], "rps"))
    again_p99 = statistics.median(round_ratios(cells["again"], cells["base"], "p99_ms"))
    print(
        f"   noise: a second proxy without shadowing, same rounds: throughput ratio "
        f"{again_rps:.2f}, p99 ratio {again_p99:.2f}"
    )
    for name in names:
        rounds = ", ".join(f"{c['rps']:.0f}/{c['p99_ms']:.1f}" for c in cells[name])
        print(f"   rounds {name:<8} req/s / p99 ms: {rounds}")
    errors = sum(median_cell(cells[name])["errors"] for name in names)
    print(f"   non-200 answers in all cells: {errors:.0f}")
    return 0


def _results(counts: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.0f}" for name, value in sorted(counts.items())) or "none"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
