"""What the proxy costs, measured in one run on loopback against one upstream simulator.

    python benchmarks/overhead.py [--seconds 4] [--rounds 3] [--concurrency 1 32]

Prints, at each concurrency, throughput and p50/p99 latency (the median of --rounds
interleaved rounds: every server runs for the whole benchmark and each round measures every
target back to back, so a burst of other load on this shared machine hits them all) for:
  (a) the client straight to the upstream (new-protocol body);
  (b) a bare aiohttp pass-through with no translation (the floor for any Python proxy);
  (c) serving-proxy translating a pandas-split request and its answer, as `serve` runs it
      (its own httptools upstream client, `proxy/upstream/http1.py`);
  (d) as (c) with httpx as the upstream client;
  (e) the floor of the proxy's own stack: the same uvicorn server and upstream client as
      (c), forwarding with none of the proxy's work (no translation, routing, middleware or
      reporting), so (c) − (e) is what the proxy itself costs;
  (f) as (c) with aiohttp as the upstream client (`server.upstream_client: aiohttp`);
and the ratios c÷b (throughput), d÷c, f÷c, and the p50 the proxy adds over (a) relative to
what (b) adds. On Linux, each cell also shows the CPU time the server in the
middle spent per request (from /proc, the measured seconds only): unlike throughput, it
hardly moves when other load on a shared machine steals the cores. Then the translation
cost alone for 1, 100 and 10,000-row frames against a stdlib-json baseline. Every server
is a child process on 127.0.0.1, stopped by its PID; the run is bounded by --seconds per
cell.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import Child, CpuMeter, child, free_port, load_wrk  # noqa: E402

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]
LEGACY_BODY = json.dumps({"columns": COLUMNS, "data": ROWS}).encode()
LEGACY_CT = "application/json; format=pandas-split"
NEW_BODY = json.dumps({"dataframe_split": {"columns": COLUMNS, "data": ROWS}}).encode()
FLOOR = "(e) uvicorn+client"


# --- (b): the bare pass-through, written here so nothing of the proxy is in it --------------


def serve_passthrough(port: int, upstream: str) -> None:
    from aiohttp import web

    async def forward(request: web.Request) -> web.Response:
        session: aiohttp.ClientSession = request.app["session"]
        body = await request.read()
        async with session.post(
            upstream + "/invocations",
            data=body,
            headers={"content-type": request.headers.get("content-type", "application/json")},
        ) as resp:
            payload = await resp.read()
            return web.Response(body=payload, status=resp.status, content_type="application/json")

    async def on_start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())

    async def on_stop(app: web.Application) -> None:
        await app["session"].close()

    app = web.Application()
    app.router.add_post("/{tail:.*}", forward)
    app.on_startup.append(on_start)
    app.on_cleanup.append(on_stop)
    import uvloop

    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- (c)/(d)/(f): serving-proxy with a chosen upstream client; (e): its stack alone ---------


def serve_proxy(port: int, config_path: str, client: str) -> None:
    from benchmarks.httpx_upstream import HttpxUpstream
    from proxy.app import create_app
    from proxy.config import load_config
    from proxy.upstream.pools import CLIENTS

    config = load_config(config_path, os.environ)
    factory = HttpxUpstream if client == "httpx" else CLIENTS[client]
    app = create_app(config, upstream_factory=factory, on_complete=lambda record: None)
    _run_as_serve_does(app, port)


def _run_as_serve_does(app: Any, port: int, **extra: Any) -> None:
    """uvicorn with the server settings and GC tuning `serving-proxy serve` uses."""
    import uvicorn

    from proxy.server import CoalescingHttpToolsProtocol, tune_memory

    tune_memory()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=CoalescingHttpToolsProtocol,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # as `serve` runs it when the config names no trusted proxy
        **extra,
    )


def serve_floor(port: int, upstream: str) -> None:
    """(e): uvicorn as `serve` runs it, forwarding through the default upstream client and
    doing nothing else."""
    from proxy.upstream.base import UpstreamSettings
    from proxy.upstream.http1 import HttptoolsUpstream

    client = HttptoolsUpstream(UpstreamSettings(upstream, 5.0, 30.0, 64, decompress=True))
    forwarded = [("content-type", "application/json")]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        reply = await client.send("POST", "/invocations", forwarded, body)
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body})

    _run_as_serve_does(app, port, lifespan="off")


# --- measuring: the load generator and the CPU meter ---------------------------------------


async def load(
    url: str, body: bytes, content_type: str, concurrency: int, seconds: float, meter: CpuMeter
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            nonlocal errors
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers={"content-type": content_type}) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - t0)

        async def worker(stop: float) -> None:
            while time.perf_counter() < stop:
                await one()

        warm = time.perf_counter() + min(1.0, seconds / 4)
        await asyncio.gather(*(worker(warm) for _ in range(concurrency)))
        latencies.clear()
        errors = 0
        meter.start()
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + seconds) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        meter.stop()
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
        "errors": errors,
        "n": len(latencies),
        "cpu_us": meter.per_request(len(latencies)),
    }


def translation_table(repeat: int) -> list[tuple[int, float, float]]:
    from proxy.protocol.legacy import parse_request
    from proxy.protocol.translate import legacy_to_v2, v2_to_legacy

    rows = []
    for n in (1, 100, 10_000):
        data = [[float(i), i * 0.5, i * 1.25, -float(i)] for i in range(n)]
        body = json.dumps({"columns": COLUMNS, "data": data}).encode()
        reply = json.dumps({"predictions": [i % 3 for i in range(n)]}).encode()
        reps = max(3, repeat // max(1, n // 10))

        def ours(body: bytes = body, reply: bytes = reply) -> None:
            request = parse_request(LEGACY_CT, body)
            legacy_to_v2(request)
            v2_to_legacy(200, "application/json", reply)

        def baseline(body: bytes = body, reply: bytes = reply) -> None:
            frame = json.loads(body)
            json.dumps({"dataframe_split": frame})
            json.dumps(json.loads(reply)["predictions"])

        rows.append((n, best_of(ours, reps), best_of(baseline, reps)))
    return rows


def best_of(fn: Callable[[], None], reps: int) -> float:
    """Median per-call seconds over `reps` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per cell")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument(
        "--client",
        choices=["auto", "wrk", "aiohttp"],
        default="auto",
        help="load generator: wrk when installed (apt-get install wrk), else an aiohttp loop",
    )
    parser.add_argument("--serve-passthrough", nargs=2, metavar=("PORT", "UPSTREAM"))
    parser.add_argument("--serve-proxy", nargs=3, metavar=("PORT", "CONFIG", "CLIENT"))
    parser.add_argument("--serve-floor", nargs=2, metavar=("PORT", "UPSTREAM"))
    args = parser.parse_args()
    if args.serve_passthrough:
        serve_passthrough(int(args.serve_passthrough[0]), args.serve_passthrough[1])
        return 0
    if args.serve_floor:
        serve_floor(int(args.serve_floor[0]), args.serve_floor[1])
        return 0
    if args.serve_proxy:
        serve_proxy(int(args.serve_proxy[0]), args.serve_proxy[1], args.serve_proxy[2])
        return 0

    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))
    print(f"load generator: {'wrk' if use_wrk else 'aiohttp client'}; {os.cpu_count()} cores")
    py = sys.executable
    me = str(Path(__file__).resolve())
    up_port, b_port, c_port, d_port, e_port, f_port = (free_port() for _ in range(6))
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "proxy.yaml"
        with child(
            [py, "-m", "sim", "simulate", "--kind", "serverless", "--port", str(up_port)],
            up_port,
        ) as upstream_server:
            upstream = upstream_server.url
            config_path.write_text(
                yaml.safe_dump(
                    {
                        "backends": {"serverless": {"url": upstream, "path": "/invocations"}},
                        "models": {"iris": {}},
                        "logging": {"access_log": False},
                    }
                )
            )
            targets: list[tuple[str, list[str], int, str, bytes, str]] = [
                ("(a) direct", [], up_port, "/invocations", NEW_BODY, "application/json"),
                (
                    "(b) bare aiohttp",
                    [py, me, "--serve-passthrough", str(b_port), upstream],
                    b_port,
                    "/invocations",
                    NEW_BODY,
                    "application/json",
                ),
                (
                    "(c) serving-proxy",
                    [py, me, "--serve-proxy", str(c_port), str(config_path), "httptools"],
                    c_port,
                    "/model/iris/1/invocations",
                    LEGACY_BODY,
                    LEGACY_CT,
                ),
                (
                    "(d) proxy+httpx",
                    [py, me, "--serve-proxy", str(d_port), str(config_path), "httpx"],
                    d_port,
                    "/model/iris/1/invocations",
                    LEGACY_BODY,
                    LEGACY_CT,
                ),
                (
                    FLOOR,
                    [py, me, "--serve-floor", str(e_port), upstream],
                    e_port,
                    "/invocations",
                    NEW_BODY,
                    "application/json",
                ),
                (
                    "(f) proxy+aiohttp",
                    [py, me, "--serve-proxy", str(f_port), str(config_path), "aiohttp"],
                    f_port,
                    "/model/iris/1/invocations",
                    LEGACY_BODY,
                    LEGACY_CT,
                ),
            ]
            rounds: dict[tuple[str, int], list[dict[str, float]]] = {}
            with ExitStack() as stack:
                servers = {
                    label: stack.enter_context(child(cmd, port) if cmd else _nothing(upstream))
                    for label, cmd, port, *_ in targets
                }
                for _ in range(args.rounds):
                    for c in args.concurrency:
                        for label, _cmd, _port, path, body, ct in targets:
                            url = servers[label].url + path
                            # (a) has no server in the middle: pid 0, no CPU figure.
                            meter = CpuMeter(servers[label].pid)
                            rounds.setdefault((label, c), []).append(
                                load_wrk(url, body, ct, c, args.seconds, meter, tmp)
                                if use_wrk
                                else asyncio.run(load(url, body, ct, c, args.seconds, meter))
                            )
    print(f"median of {args.rounds} interleaved rounds of {args.seconds:g} s per cell")
    print_table(rounds, [t[0] for t in targets], args.concurrency)
    print()
    print("translation alone (parse + legacy_to_v2 + v2_to_legacy) vs stdlib json:")
    print(f"{'rows':>8} {'proxy µs':>12} {'stdlib µs':>12} {'ratio':>7}")
    for n, ours, base in translation_table(200):
        print(f"{n:>8} {ours * 1e6:>12.1f} {base * 1e6:>12.1f} {ours / base:>7.2f}")
    return 0


@contextmanager
def _nothing(url: str) -> Iterator[Child]:
    yield Child(url, 0)


def median_cell(cells: list[dict[str, float]]) -> dict[str, float]:
    keys = ("rps", "p50_ms", "p99_ms", "cpu_us")
    return {key: statistics.median(cell[key] for cell in cells) for key in keys} | {
        "errors": sum(cell["errors"] for cell in cells)
    }


def _us(value: float) -> str:
    return "-" if value != value else f"{value:.0f}"


def print_table(
    rounds: dict[tuple[str, int], list[dict[str, float]]], labels: list[str], levels: list[int]
) -> None:
    results = {key: median_cell(cells) for key, cells in rounds.items()}
    print(
        f"{'target':<20} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
        f" {'cpu µs/req':>11}"
    )
    for c in levels:
        for label in labels:
            r = results[(label, c)]
            print(
                f"{label:<20} {c:>5} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
                f" {int(r['errors']):>7} {_us(r['cpu_us']):>11}"
            )
    print()
    for c in levels:
        a, b = results[("(a) direct", c)], results[("(b) bare aiohttp", c)]
        cc, d = results[("(c) serving-proxy", c)], results[("(d) proxy+httpx", c)]
        floor, f = results[(FLOOR, c)], results[("(f) proxy+aiohttp", c)]
        added_b = b["p50_ms"] - a["p50_ms"]
        added_c = cc["p50_ms"] - a["p50_ms"]
        print(
            f"concurrency {c}: c÷b throughput {cc['rps'] / b['rps']:.2f} (target ≥ 0.70); "
            f"d÷c throughput {d['rps'] / cc['rps']:.2f}; f÷c {f['rps'] / cc['rps']:.2f}; "
            f"p50 added c vs b {added_c:.2f} ms vs {added_b:.2f} ms "
            f"= {added_c / added_b if added_b > 0 else float('nan'):.2f}× (target ≤ 1.5)"
        )
        per_round = [
            cc_round["rps"] / b_round["rps"]
            for cc_round, b_round in zip(
                rounds[("(c) serving-proxy", c)], rounds[("(b) bare aiohttp", c)], strict=True
            )
        ]
        print(f"    c÷b per round: {', '.join(f'{x:.2f}' for x in per_round)}")
        if floor["cpu_us"] == floor["cpu_us"]:
            own = cc["cpu_us"] - floor["cpu_us"]
            print(
                f"    CPU per request: (b) {_us(b['cpu_us'])} µs, (e) floor {_us(floor['cpu_us'])}"
                f" µs, (c) {_us(cc['cpu_us'])} µs; the proxy's own work (c − e) {own:.0f} µs;"
                f" (c)÷(b) {cc['cpu_us'] / b['cpu_us']:.2f}"
            )


if __name__ == "__main__":
    sys.exit(main())
