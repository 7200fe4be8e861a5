"""`serving-proxy loadtest ...` (also `python -m loadtests ...`): locust, headless, judged.

    serving-proxy loadtest --host URL --path PATH --protocol legacy|serverless --rate N
        --duration S [--payloads FILE] [--p99-ms MS] [--p95-ms MS] [--max-error-rate R]
        [--min-rps N] [--mode open|closed] [--workers N] [--report-dir DIR]
    serving-proxy loadtest compare ...   legacy and serverless, same mix and rate, side by side
    serving-proxy loadtest worker ...    locust worker processes for a master on another host
    serving-proxy loadtest samples ...   rebuild the ready-made payload samples from the corpus

Exit status: 0 every threshold held, 1 one was breached (the output names it), 2 the run
could not be made (bad arguments, locust failed). This module never imports locust: locust
monkey-patches the whole process with gevent, so it always runs as a child process
(`python -m locust -f loadtests/locustfile.py`), stopped by its PID if it overstays.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from loadtests import mix, results, schedule

EXIT_OK = 0
EXIT_BREACH = 1
EXIT_ERROR = 2
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
PACKAGE_PARENT = LOCUSTFILE.parent.parent
HOST_ENV = "DATABRICKS_HOST"
TOKEN_ENV = "DATABRICKS_TOKEN"
# The cutover's per-request override header (`route_override`).
ROUTE_HEADER = "X-Serving-Proxy-Route"
DEFAULT_REPORT_DIR = Path("loadtest-report")
DEFAULT_MASTER_PORT = 5557
# Locust start-up, the master's wait for its workers, the end-of-run catch-up: the run is
# killed if it takes this much longer than duration + request timeout.
RUN_OVERHEAD_S = 60.0
WORKER_EXIT_TIMEOUT_S = 20.0
LOOPBACK = "127.0.0.1"


class RunError(RuntimeError):
    """The run could not be made or read back; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the requests go and in which protocol."""

    host: str
    path: str
    protocol: mix.Protocol
    headers: dict[str, str] = field(default_factory=dict)
    token_env: str = ""
    label: str = ""


@dataclass(frozen=True, slots=True)
class Load:
    """How much load, for how long, from where."""

    rate: float
    duration: float
    payloads: str
    mode: str = "open"
    users: int = 10
    ramp_steps: int = 0
    ramp_s: float = 0.0
    late_ms: float = 50.0
    max_in_flight: int = 500
    timeout_s: float = 30.0
    workers: int = 0
    expect_workers: int = 0
    master_bind_host: str = LOOPBACK
    master_bind_port: int = DEFAULT_MASTER_PORT

    @property
    def senders(self) -> int:
        """Locust users: one sender per worker (open), or `users` (closed)."""
        if self.mode == "closed":
            return self.users
        return max(1, self.workers or self.expect_workers)


# --- arguments -------------------------------------------------------------------------------


def _positive(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _non_negative(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    return parse


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"a header is 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def _add_load_arguments(parser: argparse.ArgumentParser) -> None:
    load = parser.add_argument_group("load")
    load.add_argument(
        "--rate",
        type=_positive(float),
        default=10.0,
        help="requests per second (open model: on schedule; closed: paced target)",
    )
    load.add_argument("--duration", type=_positive(float), default=20.0, help="seconds")
    load.add_argument(
        "--payloads",
        default=None,
        help="JSON-lines payload file (default: the ready-made sample for the "
        "model in --path, else iris); 'sample:NAME' names a ready-made one",
    )
    load.add_argument(
        "--mode",
        choices=["open", "closed"],
        default="open",
        help="open: fixed arrival rate, latency from the due time (default); "
        "closed: locust's usual users paced with constant_throughput",
    )
    load.add_argument("--users", type=_positive(int), default=10, help="closed mode: users")
    load.add_argument(
        "--ramp-steps",
        type=_non_negative(int),
        default=0,
        help="open mode: reach --rate in this many equal stairs ...",
    )
    load.add_argument(
        "--ramp-s",
        type=_non_negative(float),
        default=0.0,
        help="... over this many seconds (part of --duration)",
    )
    load.add_argument(
        "--late-ms",
        type=_non_negative(float),
        default=50.0,
        help="a request sent more than this after its due time counts as late",
    )
    load.add_argument(
        "--max-in-flight",
        type=_positive(int),
        default=500,
        help="open mode: requests outstanding at once per worker",
    )
    load.add_argument(
        "--timeout-s",
        type=_positive(float),
        default=30.0,
        help="per-request connect and read timeout",
    )
    dist = parser.add_argument_group("distributed (locust master/worker)")
    dist.add_argument(
        "--workers",
        type=_non_negative(int),
        default=0,
        help="start a master and this many worker processes on this machine",
    )
    dist.add_argument(
        "--expect-workers",
        type=_non_negative(int),
        default=0,
        help="be a master and wait for this many remote workers "
        "(`serving-proxy loadtest worker --master-host ...` on each)",
    )
    dist.add_argument(
        "--master-bind-host",
        default=LOOPBACK,
        help="interface the master listens on (default loopback only)",
    )
    dist.add_argument("--master-bind-port", type=_positive(int), default=DEFAULT_MASTER_PORT)
    out = parser.add_argument_group("thresholds and reports")
    out.add_argument("--p95-ms", type=_positive(float), default=None)
    out.add_argument("--p99-ms", type=_positive(float), default=None)
    out.add_argument(
        "--max-error-rate",
        type=_non_negative(float),
        default=None,
        help="failed share of completed requests, e.g. 0.01",
    )
    out.add_argument(
        "--min-rps", type=_non_negative(float), default=None, help="completed requests per second"
    )
    out.add_argument(
        "--max-late-rate",
        type=_non_negative(float),
        default=None,
        help="open mode: share of requests sent late or not at all",
    )
    out.add_argument(
        "--report-dir",
        type=Path,
        default=DEFAULT_REPORT_DIR,
        help="CSV, HTML, summary.json and locust logs go here",
    )


def build_run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serving-proxy loadtest",
        description="Load-test a legacy or serverless scoring endpoint with locust, headless; "
        "exit 1 when a threshold is breached. Subcommands: compare, worker, samples "
        "(`serving-proxy loadtest compare --help`).",
    )
    target = parser.add_argument_group("target")
    target.add_argument(
        "--host",
        default=None,
        help=f"base URL, e.g. http://127.0.0.1:8080 (serverless: default ${HOST_ENV})",
    )
    target.add_argument(
        "--path",
        required=True,
        help="e.g. /model/iris/1/invocations or /serving-endpoints/iris/invocations",
    )
    target.add_argument(
        "--protocol",
        choices=list(mix.PROTOCOLS),
        default="legacy",
        help="which side of the payload lines to send",
    )
    target.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra request header (repeatable)",
    )
    target.add_argument(
        "--token-env",
        default=None,
        help=f"env var with a bearer token (serverless: default {TOKEN_ENV})",
    )
    _add_load_arguments(parser)
    return parser


def build_compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serving-proxy loadtest compare",
        description="Run the same payload mix at the same rate against legacy, then serverless, "
        "and print both with the ratio serverless ÷ legacy. Thresholds apply to serverless.",
    )
    target = parser.add_argument_group("targets")
    target.add_argument("--host", default=None, help="default host for both sides")
    target.add_argument("--path", default=None, help="default path for both sides")
    target.add_argument(
        "--via-proxy",
        action="store_true",
        help=f"both sides through the proxy at --host/--path in the legacy "
        f"protocol, routed by '{ROUTE_HEADER}: legacy|serverless' (the cutover "
        "override; the proxy's config must allow it for your client key)",
    )
    for side in mix.PROTOCOLS:
        target.add_argument(f"--{side}-host", default=None)
        target.add_argument(f"--{side}-path", default=None)
        target.add_argument(f"--{side}-protocol", choices=list(mix.PROTOCOLS), default=None)
        target.add_argument(
            f"--{side}-header", type=_header, action="append", default=[], metavar="'NAME: VALUE'"
        )
    target.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra header for both sides",
    )
    target.add_argument(
        "--token-env",
        default=None,
        help=f"env var with a bearer token (default {TOKEN_ENV} for the serverless protocol)",
    )
    _add_load_arguments(parser)
    return parser


def _load_from(args: argparse.Namespace, path_for_sample: str) -> Load:
    payloads = args.payloads
    if payloads is None:
        payloads = mix.SAMPLE_PREFIX + mix.default_sample(path_for_sample).stem
    elif not payloads.startswith(mix.SAMPLE_PREFIX):
        payloads = str(Path(payloads).resolve())
    if args.ramp_steps and not 0 < args.ramp_s <= args.duration:
        raise RunError("--ramp-s must be more than 0 and at most --duration")
    if args.workers and args.expect_workers:
        raise RunError("--workers starts local workers; --expect-workers waits for remote ones")
    return Load(
        rate=args.rate,
        duration=args.duration,
        payloads=payloads,
        mode=args.mode,
        users=args.users,
        ramp_steps=args.ramp_steps,
        ramp_s=args.ramp_s,
        late_ms=args.late_ms,
        max_in_flight=args.max_in_flight,
        timeout_s=args.timeout_s,
        workers=args.workers,
        expect_workers=args.expect_workers,
        master_bind_host=args.master_bind_host,
        master_bind_port=args.master_bind_port,
    )


def _thresholds_from(args: argparse.Namespace) -> results.Thresholds:
    return results.Thresholds(
        p95_ms=args.p95_ms,
        p99_ms=args.p99_ms,
        max_error_rate=args.max_error_rate,
        min_rps=args.min_rps,
        max_late_rate=args.max_late_rate,
    )


def _check_host(host: str | None, protocol: str, environ: dict[str, str]) -> str:
    if host is None and protocol == "serverless":
        host = environ.get(HOST_ENV)
    if not host:
        raise RunError(
            f"--host is required (for the serverless protocol it may come from ${HOST_ENV})"
        )
    if not host.startswith(("http://", "https://")):
        raise RunError(f"--host must start with http:// or https://, got {host!r}")
    return host.rstrip("/")


def _token_env(explicit: str | None, protocol: str) -> str:
    if explicit is not None:
        return explicit
    return TOKEN_ENV if protocol == "serverless" else ""


# --- running locust --------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The locustfile imports `loadtests`; make it importable from a source checkout too.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH")) if p
    )
    return env


def locust_command(target: Target, load: Load, report_dir: Path) -> list[str]:
    """The locust master (or single-process) command line for one run."""
    cmd = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--host", target.host,
        "--csv", str(report_dir / "locust"),
        "--html", str(report_dir / "report.html"),
        # Failed requests are judged by our thresholds, not by locust's exit code.
        "--exit-code-on-error", "0",
        "--stop-timeout", str(int(load.timeout_s) + 5),
        "--loglevel", "WARNING",
        "--sp-mode", load.mode,
        "--sp-protocol", target.protocol,
        "--sp-path", target.path,
        "--sp-payloads", load.payloads,
        "--sp-rate", repr(load.rate),
        "--sp-duration", repr(load.duration),
        "--sp-ramp-steps", str(load.ramp_steps),
        "--sp-ramp-s", repr(load.ramp_s),
        "--sp-users", str(load.senders),
        "--sp-late-ms", repr(load.late_ms),
        "--sp-max-in-flight", str(load.max_in_flight),
        "--sp-timeout-s", repr(load.timeout_s),
        "--sp-headers", json.dumps(target.headers),
        "--sp-token-env", target.token_env,
        "--sp-summary", str(report_dir / "summary.json"),
        "--sp-label", target.label,
    ]  # fmt: skip
    workers = load.workers or load.expect_workers
    if workers:
        cmd += [
            "--master",
            "--expect-workers", str(workers),
            "--master-bind-host", load.master_bind_host,
            "--master-bind-port", str(load.master_bind_port),
        ]  # fmt: skip
    return cmd


def worker_command(master_host: str, master_port: int) -> list[str]:
    return [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--worker",
        "--master-host", master_host,
        "--master-port", str(master_port),
        "--loglevel", "WARNING",
    ]  # fmt: skip


def _stop(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Stop one child we started, by its PID: politely, then for good."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds through run_locust's `finally`, which stops the locust children.
    sys.exit(128 + signum)


def run_locust(target: Target, load: Load, report_dir: Path) -> results.RunSummary:
    """Run one load test to its end and read its summary back.

    Raises:
        RunError: locust failed, overstayed, or wrote no summary.
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    summary_path = report_dir / "summary.json"
    summary_path.unlink(missing_ok=True)
    if load.workers:
        load = replace(load, master_bind_host=LOOPBACK, master_bind_port=free_port())
    env = _child_env()
    logs: list[IO[bytes]] = []
    processes: list[subprocess.Popen[bytes]] = []
    master_log = report_dir / "locust.log"
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        logs.append(master_log.open("wb"))
        master = subprocess.Popen(
            locust_command(target, load, report_dir),
            env=env,
            stdout=logs[-1],
            stderr=subprocess.STDOUT,
        )
        processes.append(master)
        for number in range(load.workers):
            logs.append((report_dir / f"worker-{number}.log").open("wb"))
            processes.append(
                subprocess.Popen(
                    worker_command(LOOPBACK, load.master_bind_port),
                    env=env,
                    stdout=logs[-1],
                    stderr=subprocess.STDOUT,
                )
            )
        limit = load.duration + load.timeout_s + RUN_OVERHEAD_S
        try:
            code = master.wait(limit)
        except subprocess.TimeoutExpired:
            raise RunError(
                f"locust did not finish within {limit:.0f} s; stopped it.\n{_tail(master_log)}"
            ) from None
        for worker in processes[1:]:
            try:
                worker.wait(WORKER_EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _stop(worker)
        if code != 0 or not summary_path.exists():
            raise RunError(f"locust exited with status {code} and no summary:\n{_tail(master_log)}")
    finally:
        for process in processes:
            _stop(process)
        for log in logs:
            log.close()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    data = json.loads(summary_path.read_text(encoding="utf-8"))
    summary = results.RunSummary.from_json(data, label=target.label)
    if summary.requests == 0:
        raise RunError(f"no request completed; see {master_log}:\n{_tail(master_log)}")
    return summary


def describe(target: Target, load: Load, payload_count: int) -> str:
    if load.mode == "open":
        how = f"open model: {load.rate:g} req/s on schedule for {load.duration:g} s"
        if load.ramp_steps:
            how += f" (ramp: {load.ramp_steps} steps over {load.ramp_s:g} s)"
    else:
        how = (
            f"closed loop: {load.users} users paced to {load.rate:g} req/s for {load.duration:g} s"
        )
    where = (
        f"{load.workers} local workers"
        if load.workers
        else (f"{load.expect_workers} remote workers" if load.expect_workers else "one process")
    )
    name = target.label or target.protocol
    return (
        f"{name}: {target.protocol} protocol -> {target.host}{target.path}\n"
        f"  {how}, {where}, {payload_count} payloads from {load.payloads}"
    )


def _load_mix(load: Load, protocol: mix.Protocol) -> int:
    try:
        payloads = mix.load(mix.resolve(load.payloads), protocol)
    except mix.PayloadError as exc:
        raise RunError(str(exc)) from None
    return len(payloads)


def _print_checks(checks: Sequence[results.Check], out: IO[str]) -> int:
    if not checks:
        print("thresholds: none given", file=out)
        return EXIT_OK
    print("thresholds:", file=out)
    for check in checks:
        print(f"  {check.describe()}", file=out)
    breached = [check.flag for check in checks if not check.ok]
    if breached:
        print(f"FAIL: breached {', '.join(breached)}", file=out)
        return EXIT_BREACH
    print("PASS", file=out)
    return EXIT_OK


def _warn_schedule(summary: results.RunSummary, out: IO[str]) -> None:
    counts = summary.schedule
    if summary.mode == "open" and (counts.late or counts.unsent):
        print(
            f"warning: {counts.late} requests went out late (up to {counts.max_lag_ms:.0f} ms) and "
            f"{counts.unsent} were not sent: the generator did not keep the schedule everywhere "
            "(their latency counts from the due time; add --workers or --max-in-flight)",
            file=out,
        )


def _reports(report_dir: Path) -> str:
    names = ["report.html", "locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv",
             "summary.json"]  # fmt: skip
    return "reports: " + " ".join(str(report_dir / n) for n in names if (report_dir / n).exists())


# --- commands --------------------------------------------------------------------------------


def cmd_run(argv: Sequence[str], out: IO[str]) -> int:
    parser = build_run_parser()
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    try:
        target = Target(
            host=_check_host(args.host, args.protocol, environ),
            path=args.path,
            protocol=args.protocol,
            headers=dict(args.header),
            token_env=_token_env(args.token_env, args.protocol),
            label=args.protocol,
        )
        load = _load_from(args, args.path)
        schedule.plan(load.rate, load.duration, ramp_steps=load.ramp_steps, ramp_s=load.ramp_s)
        print(describe(target, load, _load_mix(load, target.protocol)), file=out, flush=True)
        summary = run_locust(target, load, args.report_dir)
    except (RunError, ValueError) as exc:
        print(f"serving-proxy loadtest: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(results.format_summary(summary), file=out)
    _warn_schedule(summary, out)
    code = _print_checks(results.evaluate(summary, _thresholds_from(args)), out)
    print(_reports(args.report_dir), file=out)
    return code


def _side(args: argparse.Namespace, side: str) -> Target:
    via_proxy = args.via_proxy
    default: mix.Protocol = "legacy" if via_proxy or side == "legacy" else "serverless"
    protocol: mix.Protocol = getattr(args, f"{side}_protocol") or default
    host = getattr(args, f"{side}_host") or args.host
    path = getattr(args, f"{side}_path") or args.path
    if not path:
        raise RunError(f"--{side}-path (or --path) is required")
    headers = dict(args.header)
    if via_proxy:
        headers[ROUTE_HEADER] = side
    headers.update(getattr(args, f"{side}_header"))
    return Target(
        host=_check_host(host, protocol, dict(os.environ)),
        path=path,
        protocol=protocol,
        headers=headers,
        token_env=_token_env(args.token_env, protocol),
        label=side,
    )


def cmd_compare(argv: Sequence[str], out: IO[str]) -> int:
    parser = build_compare_parser()
    args = parser.parse_args(argv)
    try:
        targets = [_side(args, side) for side in mix.PROTOCOLS]
        load = _load_from(args, targets[0].path)
        schedule.plan(load.rate, load.duration, ramp_steps=load.ramp_steps, ramp_s=load.ramp_s)
        summaries = []
        # One after the other, never at once: the two runs must not share the machine.
        for target in targets:
            print(describe(target, load, _load_mix(load, target.protocol)), file=out, flush=True)
            summaries.append(run_locust(target, load, args.report_dir / target.label))
    except (RunError, ValueError) as exc:
        print(f"serving-proxy loadtest compare: {exc}", file=sys.stderr)
        return EXIT_ERROR
    legacy, serverless = summaries
    print(results.format_comparison(legacy, serverless), file=out)
    for summary in summaries:
        _warn_schedule(summary, out)
    (args.report_dir / "comparison.json").write_text(
        json.dumps({"legacy": legacy.to_json(), "serverless": serverless.to_json()}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    print("thresholds apply to the serverless run", file=out)
    code = _print_checks(results.evaluate(serverless, _thresholds_from(args)), out)
    print(f"reports: {args.report_dir}/legacy/ {args.report_dir}/serverless/ "
          f"{args.report_dir}/comparison.json", file=out)  # fmt: skip
    return code


def cmd_worker(argv: Sequence[str], out: IO[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="serving-proxy loadtest worker",
        description="Run locust worker processes for a `serving-proxy loadtest --expect-workers N` "
        "master on another machine. Payload files named by path must exist at the same path here; "
        "'sample:NAME' mixes ship with the package.",
    )
    parser.add_argument("--master-host", required=True)
    parser.add_argument("--master-port", type=_positive(int), default=DEFAULT_MASTER_PORT)
    parser.add_argument(
        "--processes",
        type=_positive(int),
        default=1,
        help="worker processes on this machine (about one per core)",
    )
    args = parser.parse_args(argv)
    env = _child_env()
    processes = [
        subprocess.Popen(worker_command(args.master_host, args.master_port), env=env)
        for _ in range(args.processes)
    ]
    print(f"{len(processes)} locust workers for {args.master_host}:{args.master_port}", file=out)
    try:
        codes = [process.wait() for process in processes]
    finally:
        for process in processes:
            _stop(process)
    return EXIT_OK if all(code == 0 for code in codes) else EXIT_ERROR


def cmd_samples(argv: Sequence[str], out: IO[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="serving-proxy loadtest samples",
        description="Build the ready-made payload samples (one JSON-lines file per model) from "
        "the recorded corpus: every case that legacy 1.30.1 and MLflow 2.22.5 both answered 200.",
    )
    parser.add_argument("--corpus", type=Path, default=Path("../shared/corpus"))
    parser.add_argument("--out", type=Path, default=mix.SAMPLES_DIR)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the files in --out differ"
    )
    args = parser.parse_args(argv)
    try:
        samples = mix.build_samples(args.corpus)
    except mix.PayloadError as exc:
        print(f"serving-proxy loadtest samples: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.check:
        stale = [
            name
            for name, text in mix.render_samples(samples).items()
            if not (args.out / name).is_file()
            or (args.out / name).read_text(encoding="utf-8") != text
        ]
        for name in stale:
            print(f"stale: {args.out / name}", file=out)
        return EXIT_BREACH if stale else EXIT_OK
    for path in mix.write_samples(samples, args.out):
        print(f"wrote {path} ({len(path.read_text().splitlines())} payloads)", file=out)
    return EXIT_OK


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    stream = out or sys.stdout
    commands = {"compare": cmd_compare, "worker": cmd_worker, "samples": cmd_samples}
    if args and args[0] in commands:
        return commands[args[0]](args[1:], stream)
    return cmd_run(args, stream)
