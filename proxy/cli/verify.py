"""`serving-proxy verify`: parity without a live legacy server, the command.

`verify --pairs FILE.jsonl --model M [--config proxy.yaml] [--report FILE.json]
[--min-parity 1.0] [--concurrency 4]` replays the model's pairs through the translation to
its serverless endpoint and compares the answers (`proxy.cli.parity`), prints one row per
pair and a summary, and writes the report. The exit status is 0 when the share of equal
answers reaches `--min-parity`, 1 when it does not, 2 for a usage or config error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import IO

DEFAULT_CONCURRENCY = 4
DEFAULT_MIN_PARITY = 1.0


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_verify_arguments(parser: argparse.ArgumentParser, config_env: str) -> None:
    """The `verify` command's flags; `config_env` names the variable `--config` defaults to."""
    parser.add_argument(
        "--pairs", type=Path, required=True, help="JSON-lines pairs (README: the pair format)"
    )
    parser.add_argument("--model", required=True, help="the configured model to verify")
    parser.add_argument(
        "--config",
        default=os.environ.get(config_env),
        required=config_env not in os.environ,
        help=f"YAML config file (default: ${config_env})",
    )
    parser.add_argument("--report", type=Path, help="write every row and the summary as JSON")
    parser.add_argument(
        "--min-parity",
        type=_share,
        default=DEFAULT_MIN_PARITY,
        help="the share of equal answers below which the exit status is 1 (default: 1.0)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        help=f"pairs in flight at once (default: {DEFAULT_CONCURRENCY})",
    )


def run_verify(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Verify; 0 at or over `--min-parity`, 1 under it, 2 for a usage or config error."""
    # Here, not at the top: the other commands need neither the pools nor the translation.
    import asyncio

    from proxy import jsoncodec
    from proxy.cli.parity import format_summary, format_table, report, summarize, verify_pairs
    from proxy.config import ConfigError, load_config
    from proxy.telemetry.recorder import PayloadError, read_pairs

    out = out or sys.stdout
    try:
        config = load_config(args.config, os.environ)
        pair_file = read_pairs(args.pairs)
    except (ConfigError, PayloadError) as exc:
        return _usage(str(exc))
    model: str = args.model
    if model not in config.models:
        known = ", ".join(sorted(config.models))
        return _usage(f"model {model!r} is not in {args.config} (its models: {known})")
    pairs = [pair for pair in pair_file.pairs if pair.model == model]
    if not pairs:
        return _usage(
            f"{args.pairs} holds no pair of model {model!r} ({len(pair_file.pairs)} pairs of "
            f"other models, {pair_file.unanswered} lines without an answer)"
        )
    rows = asyncio.run(verify_pairs(config, model, pairs, args.concurrency))
    other_models = len(pair_file.pairs) - len(pairs)
    summary = summarize(rows, args.min_parity, other_models, pair_file.unanswered)
    for line in format_table(rows):
        print(line, file=out)
    print(file=out)
    skipped = []
    if other_models:
        skipped.append(f"{other_models} pairs of other models")
    if pair_file.unanswered:
        skipped.append(f"{pair_file.unanswered} lines without an answer")
    if skipped:
        print(f"skipped: {', '.join(skipped)}", file=out)
    print(format_summary(summary), file=out)
    if args.report is not None:
        try:
            args.report.write_bytes(jsoncodec.dumps(report(model, args.pairs, rows, summary)))
        except OSError as exc:
            return _usage(f"cannot write {args.report}: {exc.strerror}")
        print(f"report: {args.report}", file=out)
    return 0 if summary.passed else 1


def _usage(message: str) -> int:
    print(f"serving-proxy verify: {message}", file=sys.stderr)
    return 2
