"""What being one replica of a fleet costs a healthy call: window slots published to the
store, the rollout leader's lease, heartbeats and pushed changes, in one run.

    python benchmarks/fleet.py [--seconds 3] [--rounds 5] [--concurrency 1 16] [--pin]

Four proxies (the real CLI, `serving-proxy serve`) translate the same legacy request to
one instant serverless backend (`benchmarks/instant.py`), with `reporting.slot: 1s` in
all of them (ten times the publishing of the default 10 s):
  sqlite  `state:` a SQLite file of its own: one host, nothing shared beyond it;
  redis   `state: redis://…` on one redis-server started here, both `redis` proxies in
          one database: a fleet of two that publishes and merges each other's slots,
          elects a leader, heartbeats and listens for announcements.
Started sqlite, redis, redis', sqlite' (the start order alone can move a proxy's figures
on a shared machine); each round measures all four back to back (order rotating).
redis ÷ sqlite is the median over the rounds of (redis + redis') ÷ (sqlite + sqlite');
sqlite' ÷ sqlite is the noise. Loopback only; every process is stopped by its PID; each
cell is bounded by --seconds. Figures, not assertions: pytest never times.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import Child, child, free_port  # noqa: E402
from benchmarks.resilience import (  # noqa: E402
    both,
    cell_arguments,
    instant_serverless,
    measure_rounds,
    print_medians,
    served,
)
from benchmarks.routing import round_ratios  # noqa: E402

ORDER = ("sqlite", "redis", "redis'", "sqlite'")


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += ["--appendonly", "no", "--dir", str(workdir)]
    with child(args, port):
        yield f"redis://127.0.0.1:{port}/0"


@contextmanager
def proxy(workdir: Path, serverless: str, name: str, state: str) -> Iterator[Child]:
    doc = {
        "backends": {"serverless": {"url": serverless}},
        "models": {"iris": {}},
        "reporting": {"slot": "1s"},
        # Distinct, as replicas of one fleet must be (the default, $HOSTNAME, is shared).
        "server": {"replica_id": "bench-" + name.replace("'", "-again")},
        "state": state,
    }
    with served(workdir, doc) as server:
        yield server


def main() -> int:
    args = cell_arguments(__doc__, ("wrk", "redis-server"))
    if args is None:
        return 2
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        backend = instant_serverless(stack, workdir)
        redis = stack.enter_context(redis_server(workdir))
        proxies = {
            name: stack.enter_context(
                proxy(
                    workdir,
                    backend,
                    name,
                    redis if name.startswith("redis") else str(workdir / f"{name}.sqlite3"),
                )
            )
            for name in ORDER
        }
        print(f"{len(ORDER)} proxies in front of one instant backend; medians of {args.rounds}")
        header = ("config", "conc", "req/s", "p50 ms", "p99 ms", "cpu µs/req")
        print("{:8} {:>4} {:>8} {:>8} {:>8} {:>11}".format(*header))
        for concurrency in args.concurrency:
            cells = measure_rounds(proxies, concurrency, args, tmp)
            print_medians(cells, concurrency, width=8)
            fleet, alone = (
                both(cells["redis"], cells["redis'"]),
                both(cells["sqlite"], cells["sqlite'"]),
            )
            ratio = {
                key: statistics.median(round_ratios(fleet, alone, key))
                for key in ("rps", "p50_ms", "cpu_us")
            }
            noise = statistics.median(round_ratios(cells["sqlite'"], cells["sqlite"], "rps"))
            print(
                f"concurrency {concurrency}: redis÷sqlite throughput {ratio['rps']:.3f}, p50 "
                f"{ratio['p50_ms']:.3f}, CPU/request {ratio['cpu_us']:.3f}; noise (A/A "
                f"throughput sqlite'÷sqlite) {noise:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
