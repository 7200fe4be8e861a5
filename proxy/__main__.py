"""Command line: `serving-proxy serve|simulate|demo|loadtest ...` (also `python -m proxy ...`)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from proxy import __version__
from proxy.accesslog import configure_logging

CONFIG_ENV = "SERVING_PROXY_CONFIG"


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the proxy under uvicorn with uvloop and httptools."""
    import uvicorn

    from proxy.app import create_app
    from proxy.config import ConfigError, load_config
    from proxy.server import CoalescingHttpToolsProtocol, tune_gc

    try:
        config = load_config(args.config, os.environ)
    except ConfigError as exc:
        print(f"serving-proxy: {exc}", file=sys.stderr)
        return 2
    host = args.host or config.listen.host
    port = config.listen.port if args.port is None else args.port
    configure_logging(config.logging.level)
    trusted = list(config.server.trusted_proxies)
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        # httptools, with a reply's head and body sent in one write (proxy/server.py).
        "http": CoalescingHttpToolsProtocol,
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
        "timeout_graceful_shutdown": config.server.graceful_shutdown_s,
        "server_header": False,
        "access_log": False,
        "log_level": config.logging.level,
    }
    if config.server.workers > 1:
        # Several workers need an import string: each worker builds its own app.
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
        from proxy.metrics import MULTIPROC_ENV, multiprocess_directory

        # Issue 4: workers write their metrics to files there and /metrics adds them up;
        # the variable must be set before a worker first imports prometheus_client.
        with multiprocess_directory(config.reporting.multiprocess_dir) as metrics_dir:
            os.environ[MULTIPROC_ENV] = metrics_dir
            uvicorn.run(
                "proxy.app:app_from_env", factory=True, workers=config.server.workers, **common
            )
    else:
        app = create_app(config)
        tune_gc()
        uvicorn.run(app, **common)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from proxy.simulator import run_simulate

    return run_simulate(args)


def cmd_demo(argv: Sequence[str]) -> int:
    from proxy.demo import run_demo

    return run_demo(list(argv))


def cmd_report(args: argparse.Namespace) -> int:
    from proxy.report import run_report

    return run_report(args)


def cmd_loadtest(argv: Sequence[str]) -> int:
    """Hand the rest of the command line to `loadtests.cli` (locust runs in a child process).

    Imported by name at call time: `loadtests` is not part of the typed `proxy` package, and
    nothing of it is loaded for the other commands.
    """
    cli = importlib.import_module("loadtests.cli")
    code: int = cli.main(list(argv))
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serving-proxy",
        description="Legacy MLflow 1.x Model Serving in front, MLflow 2 serving endpoints behind.",
    )
    parser.add_argument("--version", action="version", version=f"serving-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument(
        "--config",
        default=os.environ.get(CONFIG_ENV),
        required=CONFIG_ENV not in os.environ,
        help=f"YAML config file (default: ${CONFIG_ENV})",
    )
    serve.add_argument("--host", help="override listen.host")
    serve.add_argument("--port", type=int, help="override listen.port")
    serve.set_defaults(func=cmd_serve)

    simulate = sub.add_parser("simulate", help="run a legacy or serverless scoring simulator")
    try:
        from proxy.simulator import add_simulate_arguments
    except ImportError:  # pragma: no cover - only while the simulator is being written
        pass
    else:
        add_simulate_arguments(simulate)
    simulate.set_defaults(func=cmd_simulate)

    # Listed for --help only: main() hands `demo ...` to the demo's own parser.
    sub.add_parser("demo", add_help=False, help="run the end-to-end demo on loopback")

    from proxy.report import add_report_arguments

    report = sub.add_parser(
        "report",
        help="print the migration report of a running proxy (token: $SERVING_PROXY_ADMIN_TOKEN)",
    )
    add_report_arguments(report)
    report.set_defaults(func=cmd_report)

    # Listed for --help only: main() hands `loadtest ...` over before argparse sees its flags.
    sub.add_parser(
        "loadtest",
        add_help=False,
        help="load-test legacy or serverless endpoints with locust (`loadtest --help`)",
    )

    # Issue 3: cutover control of a running proxy through its admin API.
    from proxy.cli_admin import add_admin_commands

    add_admin_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # These two parse their own flags: argparse's REMAINDER would refuse `demo --tries 1`.
    if args_list[:1] == ["loadtest"]:
        return cmd_loadtest(args_list[1:])
    if args_list[:1] == ["demo"]:
        return cmd_demo(args_list[1:])
    args = build_parser().parse_args(args_list)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
