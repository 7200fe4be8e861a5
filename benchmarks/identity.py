"""What proving clients and the Databricks SDK's token cost a healthy call, in one run.

    python benchmarks/identity.py [--seconds 3] [--rounds 5] [--concurrency 1 16] [--pin]

Proxies (the real CLI, `serving-proxy serve`) translate the same legacy request to one
instant serverless backend (`benchmarks/instant.py`):
  none        no `auth`, no `client_auth`: the client's Authorization passes through;
  tokens      `client_auth: {mode: tokens}`: the client's bearer token checked against a
              tokens file of 100 digests on every request;
  databricks  `auth: databricks` with `DATABRICKS_TOKEN` in the proxy's environment, so
              the SDK resolves it once and every request takes the cached token
              (`client_auth: {mode: none}`).
Each runs twice (started none, tokens, databricks, databricks', tokens', none', since the
start order alone can move a proxy's figures on a shared machine); each round measures
all of them back to back (order rotating). X ÷ none is the median over the rounds of
(X + X') ÷ (none + none'); the A/A ratio none' ÷ none is the noise. Loopback only; every
process is stopped by its PID; each cell is bounded by --seconds. Figures, not
assertions: pytest never times.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import Child  # noqa: E402
from benchmarks.resilience import (  # noqa: E402
    both,
    cell_arguments,
    instant_serverless,
    measure_rounds,
    print_medians,
    served,
)
from benchmarks.routing import round_ratios  # noqa: E402

# Made up for the run: the instant backend checks nothing, the proxy checks the client's.
CLIENT_TOKEN = "bench-client-token-0001"
WORKSPACE_TOKEN = "bench-workspace-pat-0001"
KINDS = ("none", "tokens", "databricks")
ORDER = ("none", "tokens", "databricks", "databricks'", "tokens'", "none'")


def config_of(kind: str, workdir: Path) -> dict[str, Any]:
    """The sections that make `kind`; the tokens file lists the client among 100 others."""
    if kind == "tokens":
        lines = [f"svc-{i}:{hashlib.sha256(f'other-{i}'.encode()).hexdigest()}" for i in range(99)]
        lines.append(f"bench:{hashlib.sha256(CLIENT_TOKEN.encode()).hexdigest()}")
        path = workdir / "tokens"
        path.write_text("\n".join(lines) + "\n")
        return {"client_auth": {"mode": "tokens", "tokens_file": str(path)}}
    if kind == "databricks":
        return {"client_auth": {"mode": "none"}, "auth": "databricks"}
    return {}


@contextmanager
def proxy(workdir: Path, serverless: str, kind: str) -> Iterator[Child]:
    sections = config_of(kind, workdir)
    backend: dict[str, Any] = {"url": serverless}
    if "auth" in sections:
        backend["auth"] = sections.pop("auth")
    # Only this proxy's SDK sees a workspace credential, and no profile file of the machine.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DATABRICKS_",))}
    env |= {"DATABRICKS_TOKEN": WORKSPACE_TOKEN, "DATABRICKS_CONFIG_FILE": str(workdir / "none")}
    doc = {"backends": {"serverless": backend}, "models": {"iris": {}}, **sections}
    with served(workdir, doc, env) as server:
        yield server


def main() -> int:
    args = cell_arguments(__doc__)
    if args is None:
        return 2
    headers = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        backend = instant_serverless(stack, workdir)
        proxies = {
            name: stack.enter_context(proxy(workdir, backend, name.rstrip("'"))) for name in ORDER
        }
        print(f"{len(ORDER)} proxies in front of one instant backend; medians of {args.rounds}")
        header = ("config", "conc", "req/s", "p50 ms", "p99 ms", "cpu µs/req")
        print("{:12} {:>4} {:>8} {:>8} {:>8} {:>11}".format(*header))
        for concurrency in args.concurrency:
            cells = measure_rounds(proxies, concurrency, args, tmp, headers)
            print_medians(cells, concurrency, width=12)
            paired = {kind: both(cells[kind], cells[kind + "'"]) for kind in KINDS}
            for kind in KINDS[1:]:
                ratio = {
                    key: statistics.median(round_ratios(paired[kind], paired["none"], key))
                    for key in ("rps", "p50_ms", "cpu_us")
                }
                print(
                    f"concurrency {concurrency}: {kind}÷none throughput {ratio['rps']:.3f}, "
                    f"p50 {ratio['p50_ms']:.3f}, CPU/request {ratio['cpu_us']:.3f}"
                )
            noise = statistics.median(round_ratios(cells["none'"], cells["none"], "rps"))
            print(f"concurrency {concurrency}: noise (A/A throughput none'÷none) {noise:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
