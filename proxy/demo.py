"""The end-to-end demo: legacy 1.x requests through the real proxy to a simulated new endpoint.

Starts, each as a child process on a free loopback port, a legacy and a serverless
simulator replaying the recorded corpus and the proxy itself (`python -m proxy serve`),
then sends every recorded 1.x request through the proxy at its legacy URL and prints, per
request, whether the answer equals what the 1.x server answered (corpus README rules) and
what latency the proxy added. Every child is stopped by its PID on the way out.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import httpx
import yaml

from proxy import jsoncodec

PROJECT_ROOT: Final = Path(__file__).resolve().parent.parent
# The corpus sits beside the project root (architecture: `../shared/corpus`).
DEFAULT_CORPUS: Final = PROJECT_ROOT.parent / "shared" / "corpus"
MODELS: Final = ("iris", "diabetes", "frame", "tensor")
MODEL_VERSION: Final = "1"
# The model's name in the upstream path lets the replaying simulator tell apart cases
# recorded with the same request for different models (iris and frame share inputs).
SERVERLESS_PATH: Final = "/model-endpoint/{name}/{version}/invocations"
DEFAULT_TRIES: Final = 5
DEFAULT_START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
REQUEST_TIMEOUT_S: Final = 30.0
REL_TOL: Final = 1e-9
ANSWER_WIDTH: Final = 44
LOG_TAIL_LINES: Final = 20


@dataclass(frozen=True, slots=True)
class Request:
    """One recorded HTTP request."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer, recorded or received."""

    status: int
    content_type: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class Case:
    """A corpus case with a legacy side (and usually a v2 side carrying the same input)."""

    id: str
    model: str
    legacy: Request
    expected: Answer
    v2: Request | None


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the demo's table."""

    case_id: str
    answer: Answer
    equal: bool
    why: str
    added_ms: float | None


def _request(side: dict[str, Any]) -> Request:
    raw = side["request"]
    return Request(
        method=raw["method"],
        path=raw["path"],
        headers=tuple(raw["headers"].items()),
        body=raw["body"].encode(),
    )


def load_cases(corpus: Path) -> list[Case]:
    """Every corpus case that has a legacy side, in file order."""
    cases = []
    for path in sorted((corpus / "cases").glob("*.json")):
        raw = jsoncodec.loads(path.read_bytes())
        if "legacy" not in raw:
            continue
        response = raw["legacy"]["response"]
        cases.append(
            Case(
                id=raw["id"],
                model=raw["model"],
                legacy=_request(raw["legacy"]),
                expected=Answer(
                    status=response["status"],
                    content_type=response["headers"].get("content-type"),
                    body=response["body"].encode(),
                ),
                v2=_request(raw["v2"]) if "v2" in raw else None,
            )
        )
    return cases


def legacy_path(case: Case) -> str:
    """Where a legacy Databricks client sends the recorded request (corpus README)."""
    if case.legacy.path == "/invocations":
        return f"/model/{case.model}/{MODEL_VERSION}/invocations"
    return case.legacy.path


def serverless_path(case: Case, request: Request) -> str:
    """Where the proxy sends this case's model on the serverless side (the config's template)."""
    if request.path == "/invocations":
        return SERVERLESS_PATH.format(name=case.model, version=MODEL_VERSION)
    return request.path


# --- comparison: the corpus README's rules ----------------------------------------------------


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _parse(body: bytes) -> tuple[bool, Any]:
    try:
        return True, jsoncodec.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False, None


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality with NaN == NaN and floats within 1e-9 relative (corpus README)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if a == b or (math.isnan(a) and math.isnan(b)):
            return True
        return abs(a - b) <= REL_TOL * max(abs(a), abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)


def same_answer(expected: Answer, got: Answer) -> tuple[bool, str]:
    """Whether `got` counts as the recorded answer: status; then JSON success bodies equal,
    JSON errors by `error_code`, other bodies by media type (corpus README, "Comparison")."""
    if got.status != expected.status:
        return False, f"status {got.status}, 1.x said {expected.status}"
    expected_is_json, expected_json = _parse(expected.body)
    if not expected_is_json:
        if _media_type(got.content_type) != _media_type(expected.content_type):
            return False, f"type {_media_type(got.content_type)!r}"
        return True, ""
    got_is_json, got_json = _parse(got.body)
    if not got_is_json:
        return False, "body is not JSON"
    if isinstance(expected_json, dict) and "error_code" in expected_json:
        code = got_json.get("error_code") if isinstance(got_json, dict) else None
        if code != expected_json["error_code"]:
            return False, f"error_code {code!r}, 1.x said {expected_json['error_code']!r}"
        return True, ""
    if not json_equal(expected_json, got_json):
        return False, "body differs"
    return True, ""


# --- child processes --------------------------------------------------------------------------


class Child:
    """A child process with its output in a log file; stopped by its PID, never by name."""

    def __init__(self, name: str, command: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def exited(self) -> bool:
        return self.process.poll() is not None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within the deadline."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        self._log.close()

    def log_tail(self) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(f"  {self.name}| {line}" for line in lines[-LOG_TAIL_LINES:])


def free_ports(count: int) -> list[int]:
    """Ports the kernel picked as free, all held at once so no two are the same."""
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]


def wait_ready(client: httpx.Client, child: Child, url: str, deadline: float) -> None:
    """Poll `url` until it answers 200; fail early if the child exits.

    Raises:
        RuntimeError: the child exited or was not ready by `deadline`.
    """
    while True:
        if child.exited():
            raise RuntimeError(f"{child.name} exited during start-up")
        try:
            if client.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} not ready at {url}")
        time.sleep(0.05)


def proxy_config(listen_port: int, legacy_port: int, serverless_port: int) -> dict[str, Any]:
    """The proxy's YAML config for the demo (keys fixed by the product)."""
    return {
        "listen": {"host": "127.0.0.1", "port": listen_port},
        "backends": {
            "legacy": {"url": f"http://127.0.0.1:{legacy_port}"},
            "serverless": {"url": f"http://127.0.0.1:{serverless_port}", "path": SERVERLESS_PATH},
        },
        "models": {name: {} for name in MODELS},
    }


# --- the run ----------------------------------------------------------------------------------


def _send(client: httpx.Client, base: str, path: str, request: Request) -> tuple[Answer, float]:
    started = time.perf_counter()
    response = client.request(
        request.method,
        base + path,
        headers=dict(request.headers),
        content=request.body or None,
    )
    elapsed = time.perf_counter() - started
    answer = Answer(response.status_code, response.headers.get("content-type"), response.content)
    return answer, elapsed


def measure(
    client: httpx.Client, proxy_url: str, serverless_url: str, case: Case, tries: int
) -> Row:
    """Send one case through the proxy `tries` times, and its v2 request straight upstream."""
    through: list[float] = []
    direct: list[float] = []
    # Untimed first round: it opens connections and fills the proxy's upstream pool.
    _send(client, proxy_url, legacy_path(case), case.legacy)
    answer = None
    for _ in range(tries):
        answer, seconds = _send(client, proxy_url, legacy_path(case), case.legacy)
        through.append(seconds)
        if case.v2 is not None:
            _, seconds = _send(client, serverless_url, serverless_path(case, case.v2), case.v2)
            direct.append(seconds)
    assert answer is not None  # tries >= 1, checked by the parser
    equal, why = same_answer(case.expected, answer)
    added = (statistics.median(through) - statistics.median(direct)) * 1000 if direct else None
    return Row(case.id, answer, equal, why, added)


def _shorten(body: bytes, width: int) -> str:
    text = body.decode("utf-8", errors="replace").replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(rows: Sequence[Row]) -> Iterator[str]:
    id_width = max([len("case"), *(len(row.case_id) for row in rows)])
    header = f"{'case':<{id_width}}  status  {'answer':<{ANSWER_WIDTH}}  equal  added ms"
    yield header
    yield "-" * len(header)
    for row in rows:
        equal = "yes" if row.equal else f"NO ({row.why})"
        added = "n/a" if row.added_ms is None else f"{row.added_ms:+.2f}"
        answer = _shorten(row.answer.body, ANSWER_WIDTH)
        yield (
            f"{row.case_id:<{id_width}}  {row.answer.status:>6}  "
            f"{answer:<{ANSWER_WIDTH}}  {equal:<5}  {added:>8}"
        )


def _parser() -> argparse.ArgumentParser:
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
        "dashboard until Ctrl-C (issue 4)",
    )
    return parser


def run_demo(argv: list[str] | None = None) -> int:
    """Run the demo; 0 if every answer equals the recorded 1.x answer, 1 if not, 2 on misuse."""
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:
        # `python -m proxy demo -- --tries 3`: argparse's REMAINDER keeps the separator.
        argv = argv[1:]
    args = parser.parse_args(argv)
    if args.tries < 1:
        parser.error("--tries must be at least 1")
    corpus: Path = args.corpus.resolve()
    cases = load_cases(corpus)
    if not cases:
        print(f"demo: no corpus cases with a legacy side under {corpus}", file=sys.stderr)
        return 2
    if args.hold:
        from proxy.config import ADMIN_TOKEN_ENV

        # The proxy child inherits it; its admin API and dashboard need one. Never printed.
        if not os.environ.get(ADMIN_TOKEN_ENV):
            parser.error(f"--hold needs {ADMIN_TOKEN_ENV} set: it is the dashboard's password")
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="serving-proxy-demo-") as tmp:
        workdir = Path(tmp)
        try:
            return _run(args, corpus, cases, workdir, children)
        finally:
            for child in reversed(children):
                child.stop()


def _run(
    args: argparse.Namespace, corpus: Path, cases: list[Case], workdir: Path, children: list[Child]
) -> int:
    legacy_port, serverless_port, proxy_port = free_ports(3)
    python = sys.executable
    for kind, port in (("legacy", legacy_port), ("serverless", serverless_port)):
        command = [python, "-m", "proxy", "simulate", "--kind", kind, "--port", str(port)]
        command += ["--corpus", str(corpus)]
        children.append(Child(f"{kind}-simulator", command, workdir / f"{kind}.log"))
    config_path = workdir / "proxy.yaml"
    config_path.write_text(
        yaml.safe_dump(proxy_config(proxy_port, legacy_port, serverless_port), sort_keys=False)
    )
    command = [python, "-m", "proxy", "serve", "--config", str(config_path)]
    children.append(Child("proxy", command, workdir / "proxy.log"))

    urls = {
        "legacy-simulator": f"http://127.0.0.1:{legacy_port}",
        "serverless-simulator": f"http://127.0.0.1:{serverless_port}",
        "proxy": f"http://127.0.0.1:{proxy_port}",
    }
    ready_paths = {"legacy-simulator": "/ping", "serverless-simulator": "/ping", "proxy": "/readyz"}
    # trust_env=False: an HTTP(S)_PROXY in the environment must not see loopback traffic.
    with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT_S) as client:
        deadline = time.monotonic() + args.start_timeout
        for child in children:
            try:
                wait_ready(client, child, urls[child.name] + ready_paths[child.name], deadline)
            except RuntimeError as exc:
                print(f"demo: {exc}; its log ends:\n{child.log_tail()}", file=sys.stderr)
                return 1
            print(f"started {child.name:<20} {urls[child.name]}  (pid {child.pid})")
        print(f"sending {len(cases)} recorded legacy requests, {args.tries} tries each\n")
        rows = [
            measure(client, urls["proxy"], urls["serverless-simulator"], case, args.tries)
            for case in cases
        ]
    for line in format_table(rows):
        print(line)
    equal = sum(row.equal for row in rows)
    added = [row.added_ms for row in rows if row.added_ms is not None]
    print()
    print(f"summary: {equal} of {len(rows)} equal", end="")
    if added:
        print(f"; median latency added by the proxy {statistics.median(added):.2f} ms", end="")
    print()
    code = 0 if equal == len(rows) else 1
    if args.hold:
        _hold(urls["proxy"])
    return code


def _hold(proxy_url: str) -> None:
    """Show the report of the run and keep everything up for the dashboard (issue 4)."""
    from proxy.config import ADMIN_TOKEN_ENV
    from proxy.report import ReportError, fetch, render_table

    token = os.environ[ADMIN_TOKEN_ENV]
    try:
        print(render_table(fetch(proxy_url, token)))
    except ReportError as exc:
        print(f"demo: {exc}", file=sys.stderr)
    print(f"dashboard: {proxy_url}/admin/dashboard  (any user name; password: the admin token)")
    print(f"report:    serving-proxy report --url {proxy_url}  (with {ADMIN_TOKEN_ENV} set)")
    print("Ctrl-C stops the proxy and the simulators.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print()


if __name__ == "__main__":
    sys.exit(run_demo())
