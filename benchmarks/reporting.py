"""What all of issue 4's reporting costs: throughput with it on vs off, in one run.

    python benchmarks/reporting.py [--seconds 3] [--rounds 8] [--concurrency 16]

Two `serving-proxy serve` processes run side by side on loopback in front of one serverless
simulator, identical but for reporting:

  on:  Prometheus metrics, HDR statistics, Server-Timing, and the JSON access log (written
       to a file, as a container's stdout would be drained);
  off: `reporting.metrics/stats/server_timing: false` and `logging.access_log: false`.

Each round measures off then on for --seconds each, with the same aiohttp client load of
legacy pandas-split requests (translated, the common path); rounds alternate so drift
on this 2-core machine falls on both. Prints requests/s per round and in total, and the
cost in percent of throughput from the median of the rounds' on÷off ratios (robust to a
round disturbed by another process; issue 4's target: at most 15 %). It also reads each
proxy's own CPU time (/proc) per request served: the proxy is CPU-bound, so off÷on CPU per
request is the throughput ratio it would reach alone, a figure other load does not move.
Every server is a child process on 127.0.0.1, stopped by its PID; the run is bounded by
--seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]
BODY = json.dumps({"columns": COLUMNS, "data": ROWS}).encode()
CONTENT_TYPE = "application/json; format=pandas-split"
CLIENT_KEYS = 50
TARGET_COST = 0.15


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def child(args: list[str], port: int, log: Path | None = None) -> Iterator[tuple[str, int]]:
    """Run a server process, wait until its port accepts, stop it by PID; yield URL and PID."""
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{args} exited with {process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{args} did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if log is not None and not isinstance(out, int):
            out.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): what it spent, whatever else ran."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proxy_config(upstream: str, port: int, reporting: bool) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "backends": {"serverless": {"url": upstream}},
        "models": {"iris": {}},
        "client_key": {"header": "x-client-app"},
        "logging": {"access_log": reporting},
        "reporting": {
            "metrics": reporting,
            "stats": reporting,
            "server_timing": reporting,
        },
    }


async def load(url: str, seconds: float, concurrency: int) -> tuple[int, int]:
    """Requests answered 200 (and failures) by `concurrency` clients in `seconds`."""
    ok = failed = 0
    deadline = time.monotonic() + seconds
    target = url + "/model/iris/1/invocations"

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal ok, failed
        i = n
        while time.monotonic() < deadline:
            headers = {"content-type": CONTENT_TYPE, "x-client-app": f"app-{i % CLIENT_KEYS}"}
            async with session.post(target, data=BODY, headers=headers) as response:
                await response.read()
                if response.status == 200:
                    ok += 1
                else:
                    failed += 1
            i += concurrency

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session, n) for n in range(concurrency)))
    return ok, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="sp-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        sim_port = free_port()
        upstream, _ = stack.enter_context(
            child(
                [
                    python,
                    "-m",
                    "proxy",
                    "simulate",
                    "--kind",
                    "serverless",
                    "--port",
                    str(sim_port),
                ],
                sim_port,
            )
        )
        urls, pids = {}, {}
        for name, on in (("off", False), ("on", True)):
            port = free_port()
            config = work / f"{name}.yaml"
            config.write_text(yaml.safe_dump(proxy_config(upstream, port, on)))
            command = [python, "-m", "proxy", "serve", "--config", str(config)]
            urls[name], pids[name] = stack.enter_context(child(command, port, work / f"{name}.log"))
        for url in urls.values():
            asyncio.run(load(url, 1.0, args.concurrency))  # warm-up: pools, imports, caches
        totals = {"off": 0, "on": 0}
        cpu = {"off": 0.0, "on": 0.0}
        ratios = []
        print(
            f"reporting overhead: {args.rounds} rounds x {args.seconds:g} s, "
            f"concurrency {args.concurrency}, legacy pandas-split -> serverless (translated)"
        )
        for n in range(args.rounds):
            order = ("off", "on") if n % 2 == 0 else ("on", "off")
            rates = {}
            for name in order:
                before = cpu_seconds(pids[name])
                ok, failed = asyncio.run(load(urls[name], args.seconds, args.concurrency))
                cpu[name] += cpu_seconds(pids[name]) - before
                if failed:
                    print(f"  {name}: {failed} requests failed", file=sys.stderr)
                totals[name] += ok
                rates[name] = ok / args.seconds
            ratios.append(rates["on"] / rates["off"])
            print(
                f"  round {n + 1}: off {rates['off']:8.0f} req/s   on {rates['on']:8.0f} req/s"
                f"   on/off {rates['on'] / rates['off']:.3f}"
            )
        lines = sum(1 for _ in (work / "on.log").open("rb"))
        off = totals["off"] / (args.rounds * args.seconds)
        on = totals["on"] / (args.rounds * args.seconds)
        ratio = statistics.median(ratios)
        cost = 1 - ratio
        verdict = "within" if cost <= TARGET_COST else "OVER"
        print(f"  total:   off {off:8.0f} req/s   on {on:8.0f} req/s   on/off {on / off:.3f}")
        print(f"  median of the rounds' on/off ratios: {ratio:.3f}")
        per_request = {k: cpu[k] / totals[k] * 1e6 for k in cpu}
        cpu_ratio = per_request["off"] / per_request["on"]
        print(
            f"  proxy CPU per request: off {per_request['off']:.0f} us, on "
            f"{per_request['on']:.0f} us; a CPU-bound proxy's throughput on/off "
            f"{cpu_ratio:.3f} (cost {(1 - cpu_ratio) * 100:.1f} %, robust to other load)"
        )
        print(
            f"  reporting costs {cost * 100:.1f} % of throughput ({verdict} the "
            f"{TARGET_COST * 100:.0f} % target); the 'on' proxy wrote {lines} access-log lines"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
