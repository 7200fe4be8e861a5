"""Payload mixes: the JSON-lines files a load test replays, and the ready-made samples.

Pure except for reading and writing those files; no locust here, so the CLI, the tests and
the locust users all share it. The format of one line (its `legacy` and `serverless`
sides) is `proxy.telemetry.recorder`'s, which writes recorded traffic in it; a run uses the
side of its `--protocol` and skips the lines without one.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from proxy.telemetry.recorder import SIDES, Payload, PayloadError, Side, encode_side, parse_line
from sim.corpus import Case, CorpusError, load_cases

Protocol = Side
PROTOCOLS: tuple[str, ...] = SIDES
# The corpus names the MLflow 2.x side of a case `v2` (../shared/corpus/README.md).
CORPUS_SIDES: Mapping[str, str] = {"legacy": "legacy", "serverless": "v2"}
SAMPLES_DIR = Path(__file__).resolve().parent / "payloads"
# `sample:iris` names a ready-made mix: it resolves on each machine of a distributed run.
SAMPLE_PREFIX = "sample:"
DEFAULT_SAMPLE = "iris"
# frac(i * (golden ratio - 1)) visits [0, 1) evenly for every prefix of i = 0, 1, 2, ...
_GOLDEN = 0.6180339887498949


def dumps_line(obj: Mapping[str, Any]) -> str:
    """One JSON line, ASCII only, so the file survives any editor and any locale."""
    return json.dumps(obj, ensure_ascii=True, separators=(", ", ": "))


def load(path: Path, protocol: Protocol) -> list[Payload]:
    """Every payload of a JSON-lines file for `protocol`, in file order.

    Raises:
        PayloadError: the file is unreadable, a line is malformed, or no line has that side.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PayloadError(f"{path}: cannot read: {exc}") from None
    payloads: list[Payload] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise PayloadError(f"{where}: not JSON: {exc}") from None
        payload = parse_line(obj, protocol, where)
        if payload is not None:
            payloads.append(payload)
    if not payloads:
        raise PayloadError(f"{path}: no payload has a '{protocol}' side")
    return payloads


def default_sample(path: str) -> Path:
    """The ready-made sample for the model an invocation path names, else iris's.

    `/model/<name>/...`, `/model-endpoint/<name>/...` and `/serving-endpoints/<name>/...`
    name a model; an endpoint or a model with no sample gets the iris mix.
    """
    segments = [segment for segment in path.split("/") if segment]
    if len(segments) >= 2 and segments[0] in ("model", "model-endpoint", "serving-endpoints"):
        candidate = SAMPLES_DIR / f"{segments[1]}.jsonl"
        if candidate.is_file():
            return candidate
    return SAMPLES_DIR / f"{DEFAULT_SAMPLE}.jsonl"


def resolve(reference: str) -> Path:
    """`sample:iris` -> the packaged `payloads/iris.jsonl`; anything else is a path."""
    if reference.startswith(SAMPLE_PREFIX):
        return SAMPLES_DIR / f"{reference.removeprefix(SAMPLE_PREFIX)}.jsonl"
    return Path(reference)


class Mix:
    """Picks the payload of request number *i*: deterministic, and weighted over any prefix.

    The same number always gets the same payload, so two runs (legacy and serverless, or two
    releases) send the same sequence; a low-discrepancy sequence keeps every stretch of the
    run close to the weights, unlike a seeded random draw.
    """

    def __init__(self, payloads: Sequence[Payload]) -> None:
        if not payloads:
            raise ValueError("a mix needs at least one payload")
        self.payloads = tuple(payloads)
        self._cumulative = list(itertools.accumulate(p.weight for p in self.payloads))
        self._total = self._cumulative[-1]

    def pick(self, number: int) -> Payload:
        point = ((number * _GOLDEN) % 1.0) * self._total
        index = bisect.bisect_right(self._cumulative, point)
        return self.payloads[min(index, len(self.payloads) - 1)]


# --- ready-made samples from the recorded corpus ---------------------------------------------


def _usable(case: Case) -> bool:
    """A real scoring request that both 1.30.1 and 2.22.5 answered 200 (README of the corpus).

    Error cases are left out: a load test of the happy path should not mix in requests the
    server is meant to refuse; add them to your own file to load the error path.
    """
    sides = [case.side(CORPUS_SIDES[protocol]) for protocol in PROTOCOLS]
    return all(
        side is not None
        and side.request.method == "POST"
        and side.request.path.endswith("/invocations")
        and side.response.status == 200
        for side in sides
    )


def build_samples(corpus: Path) -> dict[str, list[str]]:
    """The sample lines per model, built from `<corpus>/cases/*.json` in file order.

    Raises:
        PayloadError: the corpus has no cases.
    """
    try:
        cases = load_cases(corpus)
    except CorpusError:
        cases = ()
    if not cases:
        raise PayloadError(f"{corpus}: no cases/*.json (expected the corpus root)")
    samples: dict[str, list[str]] = {}
    for case in cases:
        if not _usable(case):
            continue
        line: dict[str, Any] = {"id": case.id, "weight": 1}
        for protocol in PROTOCOLS:
            side = case.side(CORPUS_SIDES[protocol])
            assert side is not None  # _usable
            line[protocol] = encode_side(side.request.content_type, side.request.body_bytes)
        samples.setdefault(case.model, []).append(dumps_line(line))
    return samples


def render_samples(samples: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """File name to file text, as `write_samples` writes them."""
    return {
        f"{model}.jsonl": "".join(f"{line}\n" for line in lines) for model, lines in samples.items()
    }


def write_samples(samples: Mapping[str, Iterable[str]], out_dir: Path) -> list[Path]:
    """Write one `<model>.jsonl` per model; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in sorted(render_samples(samples).items()):
        target = out_dir / name
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written
