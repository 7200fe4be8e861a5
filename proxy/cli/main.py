"""The `serving-proxy` command line (also `python -m proxy`): the parser and the dispatch.

`serve` runs the proxy; `report` and the cutover commands talk to a running one
(`proxy.cli.report`, `proxy.cli.cutover`). `simulate`, `demo` and `loadtest` belong to
other packages (`sim`, `loadtests`) that the proxy never imports statically: their
arguments are handed over at run time, and each parses its own flags.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from proxy import __version__
from proxy.cli.cutover import add_admin_commands
from proxy.cli.report import add_report_arguments, run_report
from proxy.cli.verify import add_verify_arguments, run_verify
from proxy.telemetry.accesslog import configure_logging

CONFIG_ENV = "SERVING_PROXY_CONFIG"


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the proxy under uvicorn with uvloop and httptools."""
    import uvicorn

    from proxy.app import create_app
    from proxy.config import ConfigError, load_config
    from proxy.server import CoalescingHttpToolsProtocol, tune_memory
    from proxy.serverlimits import ServerLimits

    try:
        config = load_config(args.config, os.environ)
    except ConfigError as exc:
        print(f"serving-proxy: {exc}", file=sys.stderr)
        return 2
    host = args.host or config.listen.host
    port = config.listen.port if args.port is None else args.port
    configure_logging(config.logging.level)
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        # httptools, with a reply's head and body sent in one write, and the limits on
        # heads, bodies and connections (proxy/server.py); each worker holds its share of
        # the connections. A partial, not a subclass: workers get it pickled.
        "http": functools.partial(
            CoalescingHttpToolsProtocol,
            limits=ServerLimits.of(config.limits, config.server.workers),
        ),
        # The app settles forwarding itself (proxy.middleware.RequestContextMiddleware): it
        # needs the real peer, which uvicorn's proxy_headers would replace.
        "proxy_headers": False,
        "timeout_graceful_shutdown": config.server.graceful_shutdown_s,
        "server_header": False,
        "access_log": False,
        "log_level": config.logging.level,
    }
    if config.server.workers > 1:
        # Several workers need an import string: each worker builds its own app.
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
        from proxy.telemetry.metrics import MULTIPROC_ENV, multiprocess_directory

        # Workers write their metrics to files there and /metrics adds them up;
        # the variable must be set before a worker first imports prometheus_client.
        with multiprocess_directory(config.reporting.multiprocess_dir) as metrics_dir:
            os.environ[MULTIPROC_ENV] = metrics_dir
            uvicorn.run(
                "proxy.app:app_from_env", factory=True, workers=config.server.workers, **common
            )
    else:
        app = create_app(config)
        tune_memory()
        uvicorn.run(app, **common)
    return 0


# Commands of other packages: name -> (module, function, help). `main` hands them the rest
# of the command line before argparse sees it (argparse's REMAINDER would refuse
# `demo --tries 1`); imported by name at call time, so none is loaded for other commands
# and `proxy` does not depend on them.
EXTERNAL_COMMANDS = {
    "simulate": ("sim.cli", "simulate", "run a legacy or serverless scoring simulator"),
    "demo": ("sim.cli", "demo", "run the end-to-end demo on loopback"),
    "loadtest": ("loadtests.cli", "main", "load-test legacy or serverless endpoints with locust"),
    "pairs-from-corpus": (
        "sim.pairs",
        "main",
        "turn the recorded corpus' 1.x cases into pairs for `verify`",
    ),
}


def run_external(command: str, argv: Sequence[str]) -> int:
    """Run an `EXTERNAL_COMMANDS` entry with its own arguments; its exit status."""
    module, function, _ = EXTERNAL_COMMANDS[command]
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or module.split(".")[0] != exc.name.split(".")[0]:
            raise  # a missing dependency of the command itself: its own traceback
        # The container image ships the proxy alone; the tools come with the source tree.
        print(
            f"serving-proxy: `{command}` needs the `{exc.name.split('.')[0]}` package, which this "
            "installation does not include (install serving-proxy from its source tree)",
            file=sys.stderr,
        )
        return 2
    code: int = getattr(loaded, function)(list(argv))
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

    # Listed for --help only: main() hands them over before argparse sees their flags.
    for name, (_, _, text) in EXTERNAL_COMMANDS.items():
        sub.add_parser(name, add_help=False, help=f"{text} (`{name} --help`)")

    report = sub.add_parser(
        "report",
        help="print the migration report of a running proxy (token: $SERVING_PROXY_ADMIN_TOKEN)",
    )
    add_report_arguments(report)
    report.set_defaults(func=run_report)

    verify = sub.add_parser(
        "verify",
        help="send recorded legacy requests through the translation to a model's endpoint "
        "and compare its answers with the recorded ones",
    )
    add_verify_arguments(verify, CONFIG_ENV)
    verify.set_defaults(func=run_verify)

    # Cutover control of a running proxy through its admin API.
    add_admin_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in EXTERNAL_COMMANDS:
        return run_external(args_list[0], args_list[1:])
    args = build_parser().parse_args(args_list)
    code: int = args.func(args)
    return code
