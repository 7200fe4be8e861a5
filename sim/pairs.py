"""`serving-proxy pairs-from-corpus`: the recorded corpus' 1.x cases as pairs for `verify`.

A corpus case (`sim.corpus`) holds a request sent to a real MLflow 1.30.1 scoring server and
what it answered, the same facts a pair holds (`proxy.telemetry.recorder`: the one pair
format and its reader). Every case with a legacy scoring request (`POST /invocations`)
becomes one pair of the case's model, `iris`, `diabetes`, `frame` or `tensor`, at the
version given (default 1), the path a legacy Databricks client would have used; the `GET`
cases (`/ping`, `/version`, an unknown path, ...) are left out: the proxy answers those
itself, without a backend.

So pairs can come from any 1.x server: record cases in the corpus format against a 1.x
container once, and convert them here; or put the proxy in front of it with
`recording: {enabled: true, answers: true}` and the pairs are written as traffic flows.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from proxy.telemetry.recorder import FILE_MODE, RecordedAnswer, pair_line
from sim.corpus import DEFAULT_CORPUS, Case, CorpusError, load_cases

DEFAULT_VERSION: Final = "1"


def is_scoring_case(case: Case) -> bool:
    """A case whose legacy side is a scoring request (what a pair replays)."""
    side = case.legacy
    return (
        side is not None
        and side.request.method == "POST"
        and side.request.path.endswith("/invocations")
    )


def case_pair(case: Case, version: str) -> bytes:
    """One pair line for a scoring case (`is_scoring_case`). Pure."""
    side = case.legacy
    assert side is not None  # is_scoring_case
    request, response = side.request, side.response
    return pair_line(
        line_id=case.id,
        model=case.model,
        version=version,
        path=f"/model/{case.model}/{version}/invocations",
        content_type=request.content_type,
        body=request.body_bytes,
        answer=RecordedAnswer(response.status, response.content_type, response.body_bytes),
    )


def corpus_pairs(cases: Iterable[Case], model: str | None, version: str) -> list[bytes]:
    """The pair lines of `cases` (of `model` only, when given), in corpus order. Pure."""
    return [
        case_pair(case, version)
        for case in cases
        if is_scoring_case(case) and (model is None or case.model == model)
    ]


def main(argv: list[str]) -> int:
    """Write the pairs; 0 on success, 2 on misuse (no corpus, no case of that model)."""
    parser = argparse.ArgumentParser(
        prog="serving-proxy pairs-from-corpus",
        description="Turn the recorded corpus' 1.x cases (request and 1.30.1's answer) into "
        "pairs for `serving-proxy verify`.",
    )
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="the corpus root")
    parser.add_argument("--model", help="only this model's cases (iris, diabetes, frame, tensor)")
    parser.add_argument(
        "--version",
        default=DEFAULT_VERSION,
        help="the model version the pairs name (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the pairs file to write")
    args = parser.parse_args(argv)
    try:
        cases = load_cases(args.corpus)
    except CorpusError as exc:
        print(f"pairs-from-corpus: {exc}", file=sys.stderr)
        return 2
    lines = corpus_pairs(cases, args.model, args.version)
    if not lines:
        which = f"of model {args.model!r} " if args.model else ""
        print(f"pairs-from-corpus: no scoring case {which}in {args.corpus}", file=sys.stderr)
        return 2
    try:
        # The pairs hold model inputs, as a recording does: private to their owner.
        args.out.touch(mode=FILE_MODE)
        args.out.write_bytes(b"".join(lines))
    except OSError as exc:
        print(f"pairs-from-corpus: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    models = sorted({case.model for case in cases if is_scoring_case(case)})
    if args.model:
        models = [args.model]
    print(f"wrote {len(lines)} pairs of {', '.join(models)} to {args.out}")
    return 0
