"""The `simulate`, `demo` and `fleet` commands: flags in, exit status out.

`serving-proxy simulate|demo ...` and `python -m sim simulate|demo ...` both land here; each
command parses its own flags.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final, get_args

from proxy.config import ADMIN_TOKEN_ENV, MIN_ADMIN_TOKEN_CHARS
from sim import demo as demo_run
from sim import fleet as fleet_run
from sim.app import create_simulator_app
from sim.corpus import DEFAULT_CORPUS
from sim.dialect import SimulatorKind
from sim.faults import Faults
from sim.serve import DEFAULT_HOST, check_loopback, serve_app

DEFAULT_PORTS: Final[Mapping[str, int]] = {"legacy": 5001, "serverless": 5002}
DEFAULT_TRIES: Final = 5
DEFAULT_START_TIMEOUT_S: Final = 30.0


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `simulate` command's flags to a parser."""
    parser.add_argument("--kind", choices=get_args(SimulatorKind), default="serverless")
    parser.add_argument("--host", default=DEFAULT_HOST, help="a loopback address")
    parser.add_argument(
        "--port", type=int, default=None, help="default: 5001 legacy, 5002 serverless"
    )
    parser.add_argument("--corpus", type=Path, default=None, help="replay this corpus root")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument(
        "--status", type=int, default=None, help="answer requests with this status instead"
    )
    parser.add_argument(
        "--status-times",
        type=int,
        default=None,
        help="only the first N requests get --status (default: every one)",
    )
    parser.add_argument(
        "--status-rate",
        type=float,
        default=1.0,
        help="the share of requests (seeded) that get --status (default: %(default)s)",
    )
    parser.add_argument(
        "--retry-after", default=None, help="the Retry-After value of --status answers"
    )
    parser.add_argument("--seed", type=int, default=0)


def simulate(argv: list[str]) -> int:
    """Serve a simulator under uvicorn until stopped; 2 on misuse."""
    parser = argparse.ArgumentParser(
        prog="serving-proxy simulate",
        description="A legacy or serverless MLflow scoring simulator with fault knobs, "
        "on loopback.",
    )
    add_simulate_arguments(parser)
    args = parser.parse_args(argv)
    kind: SimulatorKind = args.kind
    try:
        check_loopback(args.host)
        faults = Faults(
            delay_ms=args.delay_ms,
            jitter_ms=args.jitter_ms,
            fail_rate=args.fail_rate,
            status=args.status,
            status_times=args.status_times,
            status_rate=args.status_rate,
            retry_after=args.retry_after,
        )
        app = create_simulator_app(kind, corpus=args.corpus, faults=faults, seed=args.seed)
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    port = DEFAULT_PORTS[kind] if args.port is None else args.port
    return serve_app(app, args.host, port)


def demo(argv: list[str]) -> int:
    """Run the demo; 0 if every answer equals the recorded 1.x answer, 1 if not, 2 on misuse."""
    parser = argparse.ArgumentParser(
        prog="serving-proxy demo",
        description="Send every recorded legacy request through the proxy to simulators.",
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus root")
    parser.add_argument(
        "--tries",
        type=int,
        default=DEFAULT_TRIES,
        help="requests per case; latencies are medians (default: %(default)s)",
    )
    parser.add_argument("--start-timeout", type=float, default=DEFAULT_START_TIMEOUT_S)
    parser.add_argument(
        "--hold",
        action="store_true",
        help="afterwards, print the migration report and keep the proxy up for its "
        "dashboard until Ctrl-C",
    )
    if argv[:1] == ["--"]:
        # `serving-proxy demo -- --tries 3`: argparse's REMAINDER keeps the separator.
        argv = argv[1:]
    args = parser.parse_args(argv)
    if args.tries < 1:
        parser.error("--tries must be at least 1")
    # The proxy child inherits it; its admin API and dashboard need one. Never printed.
    if args.hold and not os.environ.get(ADMIN_TOKEN_ENV):
        parser.error(f"--hold needs {ADMIN_TOKEN_ENV} set: it is the dashboard's password")
    if args.hold and len(os.environ[ADMIN_TOKEN_ENV]) < MIN_ADMIN_TOKEN_CHARS:
        parser.error(f"{ADMIN_TOKEN_ENV} needs at least {MIN_ADMIN_TOKEN_CHARS} characters")
    return demo_run.run_demo(
        args.corpus.resolve(), tries=args.tries, start_timeout_s=args.start_timeout, hold=args.hold
    )


def fleet(argv: list[str]) -> int:
    """Run a fleet on loopback until stopped; 1 when it could not start."""
    parser = argparse.ArgumentParser(
        prog="scripts/fleet",
        description="redis-server, three proxy replicas and nginx in front of them, with "
        "simulated backends, all on loopback; stays up until Ctrl-C or SIGTERM.",
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="stop by itself after this many seconds"
    )
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    return fleet_run.run_fleet(duration_s=args.duration)
