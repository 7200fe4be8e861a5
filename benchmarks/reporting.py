"""What all of the reporting costs: throughput with it on vs off, in one run.

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
round disturbed by another process; the target: at most 15 %). It also reads each
proxy's own CPU time (/proc) per request served: the proxy is CPU-bound, so off÷on CPU per
request is the throughput ratio it would reach alone, a figure other load does not move.
Every server is a child process on 127.0.0.1, stopped by its PID; the run is bounded by
--seconds.

Then, unless --no-components, what each part costs: the app driven in this process through
ASGI with a stub upstream (the `Upstream` seam), CPU time per request with nothing on, each
part alone (access log, metrics, HDR statistics, Server-Timing) and all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from asgi_lifespan import LifespanManager

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import child, free_port
from proxy.models import UpstreamReply

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]
BODY = json.dumps({"columns": COLUMNS, "data": ROWS}).encode()
CONTENT_TYPE = "application/json; format=pandas-split"
CLIENT_KEYS = 50
TARGET_COST = 0.15
STUB_REPLY = b'{"predictions": [0, 1, 2]}'


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


async def load(
    url: str, seconds: float, concurrency: int, count: int | None = None
) -> tuple[int, int]:
    """Requests answered 200 (and failures) by `concurrency` clients in `seconds`, or
    until `count` requests were sent."""
    ok = failed = 0
    deadline = time.monotonic() + seconds
    target = url + "/model/iris/1/invocations"
    budget = [count if count is not None else -1]

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal ok, failed
        i = n
        while time.monotonic() < deadline and budget[0] != 0:
            budget[0] -= 1
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


class StubUpstream:
    """Answers every call at once with a fixed MLflow 2 reply: no socket, no sleep."""

    def __init__(self, settings: object) -> None:
        self.reply = UpstreamReply(200, (("content-type", "application/json"),), STUB_REPLY)

    async def send(self, method: str, path: str, headers: object, body: bytes) -> UpstreamReply:
        return self.reply

    async def aclose(self) -> None:
        return None


async def drive(app: Any, count: int) -> None:
    """`count` legacy requests straight through the ASGI app, lifespan included."""
    base = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/model/iris/1/invocations",
        "raw_path": b"/model/iris/1/invocations",
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Any) -> None:
        return None

    async with LifespanManager(app) as manager:
        for i in range(count):
            headers = [
                (b"content-type", CONTENT_TYPE.encode()),
                (b"x-client-app", f"app-{i % CLIENT_KEYS}".encode()),
                (b"content-length", str(len(BODY)).encode()),
            ]
            await manager.app({**base, "headers": headers, "state": {}}, receive, send)


def components(rounds: int, count: int) -> None:
    # The access log goes to a file, as in the throughput run.
    with tempfile.TemporaryFile("w") as sink:
        _components(rounds, count, sink)


def _components(rounds: int, count: int, sink: Any) -> None:
    from prometheus_client import CollectorRegistry

    from proxy.app import create_app
    from proxy.config import parse_config

    handler = logging.StreamHandler(sink)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("serving_proxy")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    variants = {
        "nothing": (False, False, False, False),
        "access log": (True, False, False, False),
        "metrics": (False, True, False, False),
        "HDR stats": (False, False, True, False),
        "Server-Timing": (False, False, False, True),
        "all": (True, True, True, True),
    }
    apps = {}
    for name, (log, metrics, stats, timing) in variants.items():
        doc = proxy_config("http://127.0.0.1:9", 0, False)
        doc["logging"]["access_log"] = log
        doc["reporting"] = {"metrics": metrics, "stats": stats, "server_timing": timing}
        config = parse_config(doc, {})
        apps[name] = create_app(config, upstream_factory=StubUpstream, registry=CollectorRegistry())
    samples: dict[str, list[float]] = {name: [] for name in apps}
    order = list(apps)
    shuffle = random.Random(4)
    for _ in range(rounds):
        # A new order each round, so a slow moment of the machine lands on no one part.
        shuffle.shuffle(order)
        for name in order:
            app = apps[name]
            gc.collect()
            start = time.process_time()
            asyncio.run(drive(app, count))
            samples[name].append((time.process_time() - start) / count * 1e6)
    base = statistics.median(samples["nothing"])
    print(f"in-process CPU per request, stub upstream ({rounds} rounds x {count}, median):")
    for name, values in samples.items():
        cost = statistics.median(values)
        print(f"  {name:<14} {cost:6.0f} us   +{cost - base:4.0f} us")


COLLECTED_RE = re.compile(r"Collected : (\d+)")


def instructions(python: str, upstream: str, work: Path, sizes: tuple[int, int]) -> None:
    """Instructions the proxy executes per request, on vs off, counted by valgrind.

    Each proxy runs under callgrind (real sockets, uvicorn, aiohttp) and serves `sizes[0]`
    then, in another run, `sizes[1]` requests; the difference divided by the difference in
    requests cancels start-up and shutdown. Instruction counts hardly depend on what else
    the machine runs (the garbage collector and timers still move them by a few percent).
    """
    runs: dict[tuple[str, int], Any] = {}
    with ExitStack() as stack:
        for name, on in (("off", False), ("on", True)):
            for size in sizes:
                port = free_port()
                config = work / f"cg-{name}-{size}.yaml"
                doc = proxy_config(upstream, port, on)
                if on:
                    # Under valgrind a run lasts minutes, so the per-slot work (summaries,
                    # ranking: per second of time, not per request, and a rounding error at
                    # real rates) would be charged to a few hundred requests: one slot.
                    doc["reporting"].update(window="1h", slot="1h")
                config.write_text(yaml.safe_dump(doc))
                log = work / f"cg-{name}-{size}.log"
                command = [
                    "valgrind",
                    "--tool=callgrind",
                    f"--callgrind-out-file={work / f'cg-{name}-{size}.out'}",
                    python,
                    "-m",
                    "proxy",
                    "serve",
                    "--config",
                    str(config),
                ]
                # Slow under valgrind: let it start and write its totals at exit.
                # A fixed hash seed: dict layouts, and so instruction counts, repeat.
                env = {**os.environ, "PYTHONHASHSEED": "0"}
                url, pid = stack.enter_context(
                    child(command, port, log=log, start_timeout=600, stop_timeout=600, env=env)
                )
                runs[(name, size)] = (url, pid, log)
        for (_, size), (url, _, _) in runs.items():
            ok, failed = asyncio.run(load(url, 3600, 4, count=size))
            if failed or ok != size:
                raise RuntimeError(f"{url}: {ok} answered, {failed} failed of {size}")
    # Leaving the stack stopped every proxy (SIGTERM): callgrind has written its totals.
    counts = {}
    for key, (_, _, log) in runs.items():
        found = COLLECTED_RE.findall(log.read_text(errors="replace"))
        if not found:
            raise RuntimeError(f"no callgrind total in {log}")
        counts[key] = int(found[-1])
    low, high = sizes
    per = {n: (counts[(n, high)] - counts[(n, low)]) / (high - low) for n in ("off", "on")}
    ratio = per["off"] / per["on"]
    print(f"instructions per request in the proxy (valgrind callgrind, {low} vs {high} requests):")
    print(f"  off {per['off']:,.0f}   on {per['on']:,.0f}   (+{per['on'] - per['off']:,.0f})")
    print(
        f"  a CPU-bound proxy's throughput on/off {ratio:.3f} "
        f"(cost {(1 - ratio) * 100:.1f} %, by instruction count)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-components", action="store_true", help="skip the breakdown")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count the proxy's instructions per request under valgrind (minutes)",
    )
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
                    "sim",
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
            urls[name], pids[name] = stack.enter_context(
                child(command, port, log=work / f"{name}.log")
            )
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
        if args.instructions:
            if shutil.which("valgrind") is None:
                print("--instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
            else:
                instructions(python, upstream, work, (100, 600))
    if not args.no_components:
        components(rounds=9, count=3000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
