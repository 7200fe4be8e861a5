"""What retries, the cold-start hold and the per-model queue cost a healthy endpoint,
measured in one run on loopback.

    python benchmarks/resilience.py [--seconds 3] [--rounds 5] [--concurrency 1 16] [--pin]

Four proxies (the real CLI, `serving-proxy serve`) translate the same legacy request to
one instant serverless backend (`benchmarks/instant.py`, answering what the serverless
simulator answers), with metrics on in all of them:
  on   retries (the serverless default), `cold_start: {hold_s: 20}`, `max_in_flight: 64`
       with its queue;
  off  `retry: {on: []}`, no hold, no per-model limit;
each twice (on, off, off', on': started in that order, since on a shared machine the
start order alone can move a proxy's figures). Each round measures all four back to back
(order rotating); each figure is the median round, and on ÷ off is the median over the
rounds of (on + on') ÷ (off + off'), beside the A/A ratios off' ÷ off and on' ÷ on.
Printed per proxy: throughput, p50, p99 and CPU per request (Linux /proc). The endpoint
never fails, so no retry, hold or queue wait happens: what is measured is what having
them configured costs. Loopback only; every process is stopped by
its PID; every cell is bounded by --seconds. Figures, not assertions: pytest never times.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import (  # noqa: E402
    Child,
    CpuMeter,
    child,
    free_port,
    leave_first_cpu,
    load_wrk,
    pin,
)
from benchmarks.routing import (  # noqa: E402
    BODY,
    CONTENT_TYPE,
    instant,
    median_cell,
    round_ratios,
    serverless_request,
    simulator,
)

LEGACY_PATH = "/model/iris/1/invocations"
SERVERLESS_PATH = "/serving-endpoints/iris/invocations"
ON: dict[str, Any] = {
    "cold_start": {"hold_s": 20},
    "max_in_flight": 64,
    "queue": {"size": 100, "timeout_s": 10},
}
OFF: dict[str, Any] = {"retry": {"on": []}}
# Started in this order: on this shared machine the order processes start in can move a
# proxy's figures by several percent, so each configuration runs twice, first and last.
CONFIGS: dict[str, dict[str, Any]] = {"on": ON, "off": OFF, "off'": OFF, "on'": ON}


@contextmanager
def served(
    workdir: Path, sections: dict[str, Any], env: dict[str, str] | None = None
) -> Iterator[Child]:
    """`serving-proxy serve` on a free loopback port with `sections` of config, quiet
    (no access log) and with a SQLite state file of its own unless `sections` says."""
    port = free_port()
    doc: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "logging": {"access_log": False, "level": "warning"},
        "state": str(workdir / f"state-{port}.sqlite3"),
        **sections,
    }
    path = workdir / f"proxy-{port}.yaml"
    path.write_text(yaml.safe_dump(doc))
    serve = [sys.executable, "-m", "proxy", "serve", "--config", str(path)]
    with child(serve, port, ready="/readyz", env=env) as server:
        yield server


def cell_arguments(doc: str, tools: tuple[str, ...] = ("wrk",)) -> argparse.Namespace | None:
    """The rounds' command line (--seconds, --rounds, --concurrency, --pin); None, said on
    stderr, when a tool the run needs is missing. With --pin, this process leaves its
    first CPU at once, so that `measure_rounds` can give it to the proxies alone."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the proxies on one CPU, wrk and the backends on the others (steadier figures)",
    )
    args = parser.parse_args()
    for tool in tools:
        if shutil.which(tool) is None:
            print(f"{tool} is needed (apt-get install {tool})", file=sys.stderr)
            return None
    args.proxy_cpus = leave_first_cpu() if args.pin else None
    if args.pin and args.proxy_cpus is None:
        print("--pin: one CPU only, nothing pinned", file=sys.stderr)
    return args


def instant_serverless(stack: ExitStack, workdir: Path) -> str:
    """The URL of an instant backend answering what the serverless simulator answers."""
    content_type, v2_body = serverless_request()
    sim = stack.enter_context(simulator("serverless"))
    return stack.enter_context(instant(workdir, sim, SERVERLESS_PATH, content_type, bytes(v2_body)))


@contextmanager
def proxy(workdir: Path, serverless: str, model: dict[str, Any]) -> Iterator[Child]:
    sections = {"backends": {"serverless": {"url": serverless}}, "models": {"iris": model}}
    with served(workdir, sections) as server:
        yield server


def measure_rounds(
    proxies: dict[str, Child],
    concurrency: int,
    args: argparse.Namespace,
    tmp: str,
    headers: dict[str, str] | None = None,
) -> dict[str, list[dict[str, float]]]:
    """`args.rounds` rounds of wrk against every proxy back to back, the order rotating
    each round; per proxy, its cell of each round."""
    names = list(proxies)
    if args.proxy_cpus is not None:
        pin([server.pid for server in proxies.values()], args.proxy_cpus)
    cells: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            server = proxies[name]
            cells[name].append(
                load_wrk(
                    server.url + LEGACY_PATH,
                    BODY,
                    CONTENT_TYPE,
                    concurrency,
                    args.seconds,
                    CpuMeter(server.pid),
                    tmp,
                    headers,
                )
            )
    return cells


def print_medians(cells: dict[str, list[dict[str, float]]], concurrency: int, width: int) -> None:
    """One line per proxy: its median round."""
    for name, rounds in cells.items():
        cell = median_cell(rounds)
        print(
            f"{name:{width}} {concurrency:>4} {cell['rps']:>8.0f} {cell['p50_ms']:>8.2f} "
            f"{cell['p99_ms']:>8.2f} {cell['cpu_us']:>11.0f}"
            + (f"  ({cell['errors']:g} errors)" if cell["errors"] else "")
        )


def both(first: list[dict[str, float]], second: list[dict[str, float]]) -> list[dict[str, float]]:
    """Each round of two proxies of one configuration as one: their sums (for ratios)."""
    return [
        {key: a[key] + b[key] for key in ("rps", "p50_ms", "cpu_us")}
        for a, b in zip(first, second, strict=True)
    ]


def main() -> int:
    args = cell_arguments(__doc__)
    if args is None:
        return 2
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        backend = instant_serverless(stack, workdir)
        proxies = {
            name: stack.enter_context(proxy(workdir, backend, model))
            for name, model in CONFIGS.items()
        }
        names = list(proxies)
        print(f"{len(names)} proxies in front of one instant backend; medians of {args.rounds}")
        header = ("config", "conc", "req/s", "p50 ms", "p99 ms", "cpu µs/req")
        print("{:8} {:>4} {:>8} {:>8} {:>8} {:>11}".format(*header))
        for concurrency in args.concurrency:
            cells = measure_rounds(proxies, concurrency, args, tmp)
            print_medians(cells, concurrency, width=8)
            on, off = both(cells["on"], cells["on'"]), both(cells["off"], cells["off'"])
            ratio = {
                key: statistics.median(round_ratios(on, off, key))
                for key in ("rps", "p50_ms", "cpu_us")
            }
            noise = {
                pair: statistics.median(round_ratios(cells[a], cells[b], "rps"))
                for pair, (a, b) in {"off'÷off": ("off'", "off"), "on'÷on": ("on'", "on")}.items()
            }
            print(
                f"concurrency {concurrency}: on÷off throughput {ratio['rps']:.3f}, p50 "
                f"{ratio['p50_ms']:.3f}, CPU/request {ratio['cpu_us']:.3f}; noise (A/A "
                "throughput): " + ", ".join(f"{k} {v:.3f}" for k, v in noise.items())
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
