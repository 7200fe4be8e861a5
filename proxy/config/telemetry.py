"""What the proxy tells about itself: `logging:`, `reporting:`, `recording:`. Pure."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from proxy.config.backends import Listen
from proxy.config.base import Duration, EnvName, Frozen

DEFAULT_SAMPLE_RATE = 0.01
DEFAULT_MAX_BYTES = 50 * 1024 * 1024


class LoggingConfig(Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True


class ReportingConfig(Frozen):
    """Latency and migration reporting; the access log is under `logging:`.

    `metrics` is Prometheus `/metrics`; `stats` the HDR windows behind `/admin/report` and
    `/admin/dashboard`. Defaults mirror `proxy.telemetry.stats.StatsSettings`.
    """

    metrics: bool = True
    stats: bool = True
    server_timing: bool = True
    window: Duration = 300.0
    slot: Duration = 10.0
    history_points: int = Field(360, ge=1, le=100_000)
    significant_figures: int = Field(2, ge=1, le=5)
    client_top_n: int = Field(20, ge=1, le=1000)
    # Client keys are hashed in every figure; a key read from `client_key.header` is shown
    # as sent only when this says so (an application name is no secret, an address may be).
    show_client_header: bool = False
    # prometheus-client's multiprocess directory when `server.workers` > 1; default: a
    # fresh temporary directory per start.
    multiprocess_dir: str | None = None
    # The environment variable holding the secret that keys the hash of client labels;
    # unset, a secret is generated once into the state store and shared by every replica.
    label_key_env: EnvName | None = None

    @model_validator(mode="after")
    def _slot_fits(self) -> ReportingConfig:
        if self.slot > self.window:
            raise ValueError("slot: must not be longer than window")
        return self


class RecordingConfig(Frozen):
    """The `recording:` key of proxy.yaml; every field has a default and it is off."""

    enabled: bool = False
    path: Path | None = None
    sample_rate: float = Field(DEFAULT_SAMPLE_RATE, ge=0.0, le=1.0)
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1)
    # Also record the legacy backend's answer (status, content type, body) beside each
    # recorded request it answered: the pairs `serving-proxy verify` replays.
    answers: bool = False

    @model_validator(mode="after")
    def _path_when_enabled(self) -> RecordingConfig:
        if self.enabled and self.path is None:
            raise ValueError("path: is required when recording is enabled")
        return self


class MetricsConfig(Frozen):
    """Who may read `/metrics`: a bearer token from `token_env`, and/or its own listener.

    With `listen` set, `/metrics` is served there only (e.g. a port the Service does not
    expose); with `token_env` set, a scrape must send `Authorization: Bearer <token>`.
    """

    token_env: EnvName | None = None
    listen: Listen | None = None
