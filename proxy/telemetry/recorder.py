"""Recording a sample of the legacy requests the proxy receives, for load tests to replay,
and the payload-line format those recordings share with `loadtests/` (its one owner).

Off unless the config turns it on (`recording: {enabled: true, path: ...}`). A sampled
request is appended as one payload line: its legacy body and Content-Type as received, and
the MLflow 2 body the proxy translated it into when there is one, so `serving-proxy
loadtest compare` can replay the same traffic on both sides. Headers are never written
(tokens live there), and the file stops growing at `max_bytes`.

One payload line is one request body, in one or both protocols (its `legacy` and
`serverless` sides):

    {"id": "iris/pandas-split", "weight": 1,
     "legacy": {"content_type": "application/json; format=pandas-split", "body": "{...}"},
     "serverless": {"content_type": "application/json", "body": "{\\"dataframe_split\\": ...}"}}

`body` is the exact text sent (bare `NaN` tokens and all); a body that is not UTF-8 is given
as `body_b64` instead. A side may be missing (a recorded sample the proxy could not
translate has no `serverless` side). Other keys (`model`, `path`, `recorded_at`) are kept
for people and ignored by the reader.

One small blocking append per *sampled* request; nothing at all for the others. Several
workers may append to one file: each line is one `write` to an `O_APPEND` descriptor, so
lines never interleave, and the cap can be overshot by at most one line per worker.

A **pair** is a payload line that also holds the answer the legacy side gave (written with
`recording: {answers: true}` for a request the legacy backend answered, or converted from
a recorded 1.x case by `serving-proxy pairs-from-corpus`); `serving-proxy verify` replays
its `legacy` side through the translation and compares the answer with it:

    {"id": "recorded/iris/3", "weight": 1, "model": "iris", "version": "3",
     "path": "/model/iris/Production/invocations", "request_id": "…",
     "recorded_at": "2025-06-01T08:00:00.000000Z",
     "legacy": {"content_type": "application/json; format=pandas-split", "body": "{...}"},
     "answer": {"status": 200, "content_type": "application/json", "body": "[0, 1, 2]"}}

`model` and `version` (the version that answered, a stage already resolved) say what to
replay it against; `answer.body` (or `answer.body_b64`) is the body as the client got it,
without any Content-Encoding. A line without `answer` is a plain sample, skipped by the
pair reader; a pair is still a payload line, so a load test can replay the same file.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from proxy import jsoncodec
from proxy.config.telemetry import RecordingConfig
from proxy.models import Body

# Owner-only: the file holds model inputs, which may be personal data.
FILE_MODE = 0o600

logger = logging.getLogger("serving_proxy.recorder")

Side = Literal["legacy", "serverless"]
SIDES: tuple[str, ...] = get_args(Side)


class PayloadError(ValueError):
    """A payload line that cannot be used; the message names the file and the line."""


@dataclass(frozen=True, slots=True)
class Payload:
    """One request body of a payload line, in one protocol."""

    id: str
    content_type: str | None
    body: bytes
    weight: float = 1.0


def encode_side(content_type: str | None, body: Body) -> dict[str, Any]:
    """A payload line's `legacy`/`serverless` object for this request."""
    side: dict[str, Any] = {"content_type": content_type}
    try:
        side["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        side["body_b64"] = base64.b64encode(body).decode("ascii")
    return side


def _decode_side(side: Any, where: str) -> tuple[str | None, bytes]:
    if not isinstance(side, dict):
        raise PayloadError(f"{where}: a side must be an object with content_type and body")
    content_type = side.get("content_type")
    if content_type is not None and not isinstance(content_type, str):
        raise PayloadError(f"{where}: content_type must be a string or null")
    if "body" in side:
        body = side["body"]
        if not isinstance(body, str):
            raise PayloadError(f"{where}: body must be a string (the exact text sent)")
        return content_type, body.encode("utf-8")
    if "body_b64" in side:
        try:
            return content_type, base64.b64decode(side["body_b64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise PayloadError(f"{where}: body_b64 is not base64") from None
    raise PayloadError(f"{where}: a side needs body or body_b64")


def parse_line(obj: Any, side: Side, where: str) -> Payload | None:
    """The payload of one parsed line for `side`, or None when the line has no such side.

    Raises:
        PayloadError: the line is not a payload object.
    """
    if not isinstance(obj, dict):
        raise PayloadError(f"{where}: each line must be a JSON object")
    payload_id = obj.get("id", where)
    if not isinstance(payload_id, str) or not payload_id:
        raise PayloadError(f"{where}: id must be a non-empty string")
    weight = obj.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
        raise PayloadError(f"{where}: weight must be a positive number")
    if not any(name in obj for name in SIDES):
        raise PayloadError(f"{where}: a line needs a 'legacy' or 'serverless' side")
    if side not in obj:
        return None
    content_type, body = _decode_side(obj[side], f"{where} {side}")
    return Payload(payload_id, content_type, body, float(weight))


@dataclass(frozen=True, slots=True)
class RecordedAnswer:
    """The legacy side's answer to a recorded request, as its client got it."""

    status: int
    content_type: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class Pair:
    """One pair line: a legacy request and the answer the legacy side gave it.

    `line` is its line number in the file (1-based), `version` the model version that
    answered; `request_id` is the proxy's id of the recorded request, when it has one.
    """

    line: int
    id: str
    model: str
    version: str
    path: str
    content_type: str | None
    body: bytes
    answer: RecordedAnswer
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class PairFile:
    """The pairs of one file in file order, and how many lines were samples, not pairs."""

    pairs: tuple[Pair, ...]
    unanswered: int


def encode_answer(answer: RecordedAnswer) -> dict[str, Any]:
    """A pair's `answer` object."""
    return {"status": answer.status, **encode_side(answer.content_type, answer.body)}


def _line(
    *,
    line_id: str,
    model: str,
    version: str,
    path: str,
    content_type: str | None,
    body: bytes,
    v2_content_type: str | None,
    v2_body: Body | None,
    answer: RecordedAnswer | None,
    request_id: str | None,
    recorded_at: str | None,
) -> bytes:
    line: dict[str, Any] = {
        "id": line_id,
        "weight": 1,
        "model": model,
        "version": version,
        "path": path,
    }
    if request_id is not None:
        line["request_id"] = request_id
    if recorded_at is not None:
        line["recorded_at"] = recorded_at
    line["legacy"] = encode_side(content_type, body)
    if v2_body is not None:
        line["serverless"] = encode_side(v2_content_type, v2_body)
    if answer is not None:
        line["answer"] = encode_answer(answer)
    # jsoncodec.dumps is orjson: compact, UTF-8, no NaN issue (bodies are strings here).
    return jsoncodec.dumps(line) + b"\n"


def sample_line(
    *,
    model: str,
    version: str,
    path: str,
    content_type: str | None,
    body: bytes,
    v2_content_type: str | None = None,
    v2_body: Body | None = None,
    answer: RecordedAnswer | None = None,
    request_id: str | None = None,
    now: float | None = None,
) -> bytes:
    """One payload line (with its newline) for this request; a pair when `answer` is
    given. Pure."""
    at = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e6):06d}Z"
    return _line(
        # One id per model version, so a replay's statistics group by model, not by line.
        line_id=f"recorded/{model}/{version}",
        model=model,
        version=version,
        path=path,
        content_type=content_type,
        body=body,
        v2_content_type=v2_content_type,
        v2_body=v2_body,
        answer=answer,
        request_id=request_id,
        recorded_at=stamp,
    )


def pair_line(
    *,
    line_id: str,
    model: str,
    version: str,
    path: str,
    content_type: str | None,
    body: bytes,
    answer: RecordedAnswer,
) -> bytes:
    """One pair line (with its newline) for a request recorded elsewhere (a corpus case),
    so it carries no `recorded_at` of its own. Pure."""
    return _line(
        line_id=line_id,
        model=model,
        version=version,
        path=path,
        content_type=content_type,
        body=body,
        v2_content_type=None,
        v2_body=None,
        answer=answer,
        request_id=None,
        recorded_at=None,
    )


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise PayloadError(f"{where}: {key} must be a non-empty string")
    return value


def parse_pair(obj: Any, where: str, line: int) -> Pair | None:
    """The pair of one parsed line, or None for a line without an answer (a sample).

    Raises:
        PayloadError: the line is not a payload object, or its answer or its model is
            malformed; the message says which key.
    """
    payload = parse_line(obj, "legacy", where)
    if "answer" not in obj:
        return None
    if payload is None:
        raise PayloadError(f"{where}: a pair needs a 'legacy' side (the request sent)")
    raw = obj["answer"]
    content_type, body = _decode_side(raw, f"{where} answer")
    status = raw.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise PayloadError(f"{where} answer: status must be an HTTP status (100-599)")
    model = _string(obj, "model", where)
    version = obj.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not version:
        raise PayloadError(f"{where}: version must be a non-empty string")
    path = obj.get("path", f"/model/{model}/{version}/invocations")
    if not isinstance(path, str):
        raise PayloadError(f"{where}: path must be a string")
    request_id = obj.get("request_id")
    if request_id is not None and not isinstance(request_id, str):
        raise PayloadError(f"{where}: request_id must be a string")
    return Pair(
        line=line,
        id=payload.id,
        model=model,
        version=version,
        path=path,
        content_type=payload.content_type,
        body=payload.body,
        answer=RecordedAnswer(status, content_type, body),
        request_id=request_id,
    )


def read_pairs(path: Path) -> PairFile:
    """Every pair of a JSON-lines file, in file order (blank lines ignored).

    Raises:
        PayloadError: the file cannot be read, or a line is not JSON or not a payload line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise PayloadError(f"{path}: cannot read: {reason}") from None
    pairs: list[Pair] = []
    unanswered = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = jsoncodec.loads(raw)
        except ValueError:
            raise PayloadError(f"{where}: not JSON") from None
        pair = parse_pair(obj, where, number)
        if pair is None:
            unanswered += 1
        else:
            pairs.append(pair)
    return PairFile(tuple(pairs), unanswered)


def record_sample(
    config: RecordingConfig,
    *,
    model: str,
    version: str,
    path: str,
    content_type: str | None,
    body: bytes,
    v2_content_type: str | None = None,
    v2_body: Body | None = None,
    answer: Callable[[], RecordedAnswer] | None = None,
    request_id: str | None = None,
    draw: Callable[[], float] = random.random,
) -> bool:
    """Append this request to the recording file if recording is on and it is sampled.

    Never raises: a recording that cannot be written must not fail the request, so the
    error is logged and the request goes on. Returns True when a line was written.

    Args:
        config: the `recording:` config.
        model, version: the resolved model reference.
        path: the request path as received (`/model/<name>/<version-or-stage>/invocations`).
        content_type, body: the legacy request as received (None: no Content-Type header).
        v2_content_type, v2_body: the translated MLflow 2 request, when the proxy built one.
        answer: builds the legacy side's answer, making the line a pair; called only for
            a sampled request (it may have to undo a Content-Encoding).
        request_id: the request's id, kept on a pair so it can be found in the access log.
        draw: returns a number in [0, 1); injected so tests choose what is sampled.
    """
    if not config.enabled or config.path is None or config.sample_rate <= 0:
        return False
    if draw() >= config.sample_rate:
        return False
    line = sample_line(
        model=model,
        version=version,
        path=path,
        content_type=content_type,
        body=body,
        v2_content_type=v2_content_type,
        v2_body=v2_body,
        answer=None if answer is None else answer(),
        request_id=request_id,
    )
    return _append(config, line)


def _append(config: RecordingConfig, line: bytes) -> bool:
    assert config.path is not None  # record_sample checked it
    try:
        fd = os.open(config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            if os.fstat(fd).st_size + len(line) > config.max_bytes:
                return False
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        logger.warning("recording: cannot append to %s: %s", config.path, exc.strerror)
        return False
    return True
