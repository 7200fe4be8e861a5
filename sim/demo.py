"""The end-to-end demo: legacy 1.x requests through the real proxy to a simulated new endpoint.

Starts, each as a child process on a free loopback port, a legacy and a serverless
simulator replaying the recorded corpus and the proxy itself (`python -m proxy serve`),
then sends every recorded 1.x request through the proxy at its legacy URL and prints, per
request, whether the answer equals what the 1.x server answered (`sim.equality`) and
what latency the proxy added. Every child is stopped by its PID on the way out.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import yaml

from proxy.config import ADMIN_TOKEN_ENV
from proxy.models import ModelRef
from proxy.protocol.paths import render_path
from sim.children import Child, free_ports, wait_ready
from sim.corpus import PROJECT_ROOT, Case, CorpusError, Request, load_cases
from sim.equality import reply_mismatch

MODELS: Final = ("iris", "diabetes", "frame", "tensor")
MODEL_VERSION: Final = "1"
# The model's name in the upstream path lets the replaying simulator tell apart cases
# recorded with the same request for different models (iris and frame share inputs).
SERVERLESS_PATH: Final = "/model-endpoint/{name}/{version}/invocations"
REQUEST_TIMEOUT_S: Final = 30.0
ANSWER_WIDTH: Final = 44


@dataclass(frozen=True, slots=True)
class ReceivedAnswer:
    """One HTTP answer the demo received."""

    status: int
    content_type: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the demo's table."""

    case_id: str
    answer: ReceivedAnswer
    equal: bool
    why: str
    added_ms: float | None


def legacy_cases(corpus: Path) -> list[Case]:
    """Every corpus case that has a legacy side, in file order; none if `corpus` has none."""
    try:
        return [case for case in load_cases(corpus) if case.legacy is not None]
    except CorpusError:
        return []


def legacy_path(case: Case) -> str:
    """Where a legacy Databricks client sends the recorded request (corpus README)."""
    assert case.legacy is not None
    if case.legacy.request.path == "/invocations":
        return f"/model/{case.model}/{MODEL_VERSION}/invocations"
    return case.legacy.request.path


def serverless_path(case: Case, request: Request) -> str:
    """Where the proxy sends this case's model on the serverless side (the config's template)."""
    if request.path == "/invocations":
        ref = ModelRef(
            name=case.model, requested=MODEL_VERSION, version=MODEL_VERSION, endpoint=case.model
        )
        return render_path(SERVERLESS_PATH, ref)
    return request.path


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


def _send(
    client: httpx.Client, base: str, path: str, request: Request
) -> tuple[ReceivedAnswer, float]:
    started = time.perf_counter()
    response = client.request(
        request.method,
        base + path,
        headers=dict(request.headers),
        content=request.body_bytes or None,
    )
    elapsed = time.perf_counter() - started
    answer = ReceivedAnswer(
        response.status_code, response.headers.get("content-type"), response.content
    )
    return answer, elapsed


def measure(
    client: httpx.Client, proxy_url: str, serverless_url: str, case: Case, tries: int
) -> Row:
    """Send one case through the proxy `tries` times, and its v2 request straight upstream."""
    assert case.legacy is not None
    legacy = case.legacy.request
    through: list[float] = []
    direct: list[float] = []
    # Untimed first round: it opens connections and fills the proxy's upstream pool.
    _send(client, proxy_url, legacy_path(case), legacy)
    answer = None
    for _ in range(tries):
        answer, seconds = _send(client, proxy_url, legacy_path(case), legacy)
        through.append(seconds)
        if case.v2 is not None:
            v2 = case.v2.request
            _, seconds = _send(client, serverless_url, serverless_path(case, v2), v2)
            direct.append(seconds)
    assert answer is not None  # tries >= 1, checked by the parser
    why = reply_mismatch(case.legacy.response, answer.status, answer.content_type, answer.body)
    added = (statistics.median(through) - statistics.median(direct)) * 1000 if direct else None
    return Row(case.id, answer, why is None, why or "", added)


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


def run_demo(corpus: Path, *, tries: int, start_timeout_s: float, hold: bool) -> int:
    """Run the demo; 0 if every answer equals the recorded 1.x answer, 1 if not, 2 on misuse.

    With `hold`, `ADMIN_TOKEN_ENV` must be set (the caller checks): the proxy child
    inherits it for its admin API and dashboard.
    """
    cases = legacy_cases(corpus)
    if not cases:
        print(f"demo: no corpus cases with a legacy side under {corpus}", file=sys.stderr)
        return 2
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="serving-proxy-demo-") as tmp:
        workdir = Path(tmp)
        try:
            return _run(corpus, cases, tries, start_timeout_s, hold, workdir, children)
        finally:
            for child in reversed(children):
                child.stop()


def _run(
    corpus: Path,
    cases: list[Case],
    tries: int,
    start_timeout_s: float,
    hold: bool,
    workdir: Path,
    children: list[Child],
) -> int:
    legacy_port, serverless_port, proxy_port = free_ports(3)
    python = sys.executable
    for kind, port in (("legacy", legacy_port), ("serverless", serverless_port)):
        command = [python, "-m", "sim", "simulate", "--kind", kind, "--port", str(port)]
        command += ["--corpus", str(corpus)]
        children.append(Child(f"{kind}-simulator", command, workdir / f"{kind}.log", PROJECT_ROOT))
    config_path = workdir / "proxy.yaml"
    config_path.write_text(
        yaml.safe_dump(proxy_config(proxy_port, legacy_port, serverless_port), sort_keys=False)
    )
    command = [python, "-m", "proxy", "serve", "--config", str(config_path)]
    children.append(Child("proxy", command, workdir / "proxy.log", PROJECT_ROOT))

    urls = {
        "legacy-simulator": f"http://127.0.0.1:{legacy_port}",
        "serverless-simulator": f"http://127.0.0.1:{serverless_port}",
        "proxy": f"http://127.0.0.1:{proxy_port}",
    }
    ready_paths = {"legacy-simulator": "/ping", "serverless-simulator": "/ping", "proxy": "/readyz"}
    # trust_env=False: an HTTP(S)_PROXY in the environment must not see loopback traffic.
    with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT_S) as client:
        deadline = time.monotonic() + start_timeout_s
        for child in children:
            try:
                wait_ready(client, child, urls[child.name] + ready_paths[child.name], deadline)
            except RuntimeError as exc:
                print(f"demo: {exc}; its log ends:\n{child.log_tail()}", file=sys.stderr)
                return 1
            print(f"started {child.name:<20} {urls[child.name]}  (pid {child.pid})")
        print(f"sending {len(cases)} recorded legacy requests, {tries} tries each\n")
        rows = [
            measure(client, urls["proxy"], urls["serverless-simulator"], case, tries)
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
    if hold:
        _hold(urls["proxy"])
    return code


def _hold(proxy_url: str) -> None:
    """Show the report of the run and keep everything up for the dashboard."""
    # Imported here: only a held demo talks to the admin API.
    from proxy.cli.client import CliError
    from proxy.cli.report import fetch, render_table

    token = os.environ[ADMIN_TOKEN_ENV]
    try:
        print(render_table(fetch(proxy_url, token)))
    except CliError as exc:
        print(f"demo: {exc}", file=sys.stderr)
    print(f"dashboard: {proxy_url}/admin/dashboard  (any user name; password: the admin token)")
    print(f"report:    serving-proxy report --url {proxy_url}  (with {ADMIN_TOKEN_ENV} set)")
    print("Ctrl-C stops the proxy and the simulators.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print()
