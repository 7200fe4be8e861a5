"""Recording a sample of the legacy requests the proxy receives, for load tests to replay.

Off unless the config turns it on (`recording: {enabled: true, path: ...}`). A sampled
request is appended as one line of the JSON-lines payload format `loadtests/` reads
(loadtests/mix.py): its legacy body and Content-Type as received, and the MLflow 2 body
the proxy translated it into when there is one, so `serving-proxy loadtest compare` can
replay the same traffic on both sides. Headers are never written (tokens live there), and
the file stops growing at `max_bytes`.

One small blocking append per *sampled* request; nothing at all for the others. Several
workers may append to one file: each line is one `write` to an `O_APPEND` descriptor, so
lines never interleave, and the cap can be overshot by at most one line per worker.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from proxy import jsoncodec

DEFAULT_SAMPLE_RATE = 0.01
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# Owner-only: the file holds model inputs, which may be personal data.
FILE_MODE = 0o600

logger = logging.getLogger("serving_proxy.recorder")


class RecordingConfig(BaseModel):
    """The `recording:` key of proxy.yaml; every field has a default and it is off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    path: Path | None = None
    sample_rate: float = Field(DEFAULT_SAMPLE_RATE, ge=0.0, le=1.0)
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1)

    @model_validator(mode="after")
    def _path_when_enabled(self) -> RecordingConfig:
        if self.enabled and self.path is None:
            raise ValueError("path: is required when recording is enabled")
        return self


def _side(content_type: str | None, body: bytes) -> dict[str, Any]:
    side: dict[str, Any] = {"content_type": content_type}
    try:
        side["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        side["body_b64"] = base64.b64encode(body).decode("ascii")
    return side


def sample_line(
    *,
    model: str,
    version: str,
    path: str,
    content_type: str | None,
    body: bytes,
    v2_content_type: str | None = None,
    v2_body: bytes | None = None,
    now: float | None = None,
) -> bytes:
    """One payload line (with its newline) for this request. Pure."""
    at = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e6):06d}Z"
    line: dict[str, Any] = {
        # One id per model version, so a replay's statistics group by model, not by line.
        "id": f"recorded/{model}/{version}",
        "weight": 1,
        "model": model,
        "path": path,
        "recorded_at": stamp,
        "legacy": _side(content_type, body),
    }
    if v2_body is not None:
        line["serverless"] = _side(v2_content_type, v2_body)
    # jsoncodec.dumps is orjson: compact, UTF-8, no NaN issue (bodies are strings here).
    return jsoncodec.dumps(line) + b"\n"


def record_sample(
    config: RecordingConfig,
    *,
    model: str,
    version: str,
    path: str,
    content_type: str | None,
    body: bytes,
    v2_content_type: str | None = None,
    v2_body: bytes | None = None,
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
    )
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
