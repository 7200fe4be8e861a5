"""The proxy's typed configuration: a YAML file validated once at start-up, frozen after.

Pure except for the one file read in `load_config`. Secrets never live in the file: the
file names environment variables (`token_env`), read through the injected `environ`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from proxy.models import Backend, CsvMode, LegacyProtocol, UpstreamNan
from proxy.recorder import RecordingConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_CONNECT_TIMEOUT_S = 5.0
# protocols.md §8.9: 1.x clients saw gunicorn's 60 s worker timeout.
DEFAULT_TOTAL_TIMEOUT_S = 60.0
# protocols.md §4.2 / D-limits: 16 MB per request on legacy and GA serving.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_IN_FLIGHT = 1024
DEFAULT_POOL_SIZE = 100
DEFAULT_GRACEFUL_SHUTDOWN_S = 30.0
# Run-time cutover state (issue 3): a SQLite file beside the config unless `state:` says.
DEFAULT_STATE_FILE = "serving-proxy-state.sqlite3"
ADMIN_TOKEN_ENV = "SERVING_PROXY_ADMIN_TOKEN"
DEFAULT_SHADOW_CONCURRENCY = 16
DEFAULT_MISMATCHES_KEPT = 50
DEFAULT_ABS_TOL = 1e-6
DEFAULT_REL_TOL = 1e-6
DEFAULT_GATE_MIN_SAMPLES = 20
DEFAULT_MAX_ERROR_RATE = 0.01
DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
PATH_FIELDS = frozenset({"name", "version", "endpoint"})
VERSION_RE = re.compile(r"^[0-9]+$")
# Names become URL path segments and metric labels: keep them to what registries allow.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(Exception):
    """The config cannot be used; the message names the file and the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Listen(_Frozen):
    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)


class Timeouts(_Frozen):
    """Upstream timeouts in seconds (§6.5 UT)."""

    connect: float = Field(DEFAULT_CONNECT_TIMEOUT_S, gt=0)
    total: float = Field(DEFAULT_TOTAL_TIMEOUT_S, gt=0)


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must not carry a query, fragment or credentials")
    return value.rstrip("/")


def _check_template(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must start with '/'")
    fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    unknown = fields - PATH_FIELDS
    if unknown:
        raise ValueError(f"may only use {{name}}, {{version}}, {{endpoint}}; got {sorted(unknown)}")
    return value


class BackendConfig(_Frozen):
    """One upstream. `path` is a template for the serverless side (§1.1, §1.2)."""

    url: str
    path: str | None = None
    token_env: str | None = None
    timeout: Timeouts = Timeouts()
    pool_size: int = Field(DEFAULT_POOL_SIZE, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else _check_template(value)

    @field_validator("token_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and not ENV_RE.match(value):
            raise ValueError("must be an environment variable name")
        return value


class BackendOverride(_Frozen):
    """A model's override of some of a backend's keys."""

    url: str | None = None
    path: str | None = None
    token_env: str | None = None
    timeout: Timeouts | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else _check_template(value)


class Backends(_Frozen):
    legacy: BackendConfig | None = None
    serverless: BackendConfig | None = None


def _duration(value: Any) -> Any:
    """`10m`, `30s`, `500ms`, `1h`, or a number of seconds."""
    if isinstance(value, str):
        match = DURATION_RE.match(value)
        if match is None:
            raise ValueError("must be a duration such as 500ms, 30s, 10m or 1h")
        return float(match.group(1)) * DURATION_UNITS[match.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Percent = Annotated[float, Field(ge=0, le=100)]
Share = Annotated[float, Field(ge=0, le=1)]


class ClientKeyConfig(_Frozen):
    """What makes a client sticky (issue 3 §2), tried in this order; none found: per request.

    The address is `scope["client"]`, which uvicorn sets from X-Forwarded-For only for the
    peers in `server.trusted_proxies`.
    """

    header: str | None = None
    authorization: bool = False
    address: bool = True

    @field_validator("header")
    @classmethod
    def _header(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", value):
            raise ValueError("must be an HTTP header name")
        return None if value is None else value.lower()


class RouteOverrideConfig(_Frozen):
    """Client keys allowed to choose their backend with `X-Serving-Proxy-Route` (issue 3 §7)."""

    clients: tuple[str, ...] = ()


class CompareConfig(_Frozen):
    """How a shadow answer is compared with the primary one (issue 3 §5)."""

    abs_tol: float = Field(DEFAULT_ABS_TOL, ge=0)
    rel_tol: float = Field(DEFAULT_REL_TOL, ge=0)
    # `$.a[*].b` paths (`*` any key or index), or a bare key name matched at any depth.
    ignore: tuple[str, ...] = ()
    ignore_order: bool = False


class ShadowConfig(_Frozen):
    """Process-wide shadowing limits; the share per model is `shadow_percent`."""

    max_concurrency: int = Field(DEFAULT_SHADOW_CONCURRENCY, ge=1)
    keep_mismatches: int = Field(DEFAULT_MISMATCHES_KEPT, ge=0)
    # Off: a mismatch keeps the differing field's two values only, never the bodies.
    keep_payloads: bool = False
    # Where shadow calls and comparisons run: `process`, a worker process of their own
    # (`proxy.shadowworker`), so their CPU never stalls the event loop that answers
    # clients; `inline`, tasks on that event loop (no extra process).
    isolation: Literal["process", "inline"] = "process"


class ErrorRateGate(_Frozen):
    max: Share = DEFAULT_MAX_ERROR_RATE
    min_samples: int = Field(DEFAULT_GATE_MIN_SAMPLES, ge=1)


class LatencyGate(_Frozen):
    """Serverless p99 over legacy p99; a p99 at or under `floor_ms` always passes."""

    max: float = Field(1.5, gt=0)
    min_samples: int = Field(DEFAULT_GATE_MIN_SAMPLES, ge=1)
    floor_ms: float = Field(0.0, ge=0)


class ParityGate(_Frozen):
    min: Share = 0.99
    min_samples: int = Field(DEFAULT_GATE_MIN_SAMPLES, ge=1)


class Gates(_Frozen):
    error_rate: ErrorRateGate | None = ErrorRateGate()
    p99_ratio: LatencyGate | None = None
    parity: ParityGate | None = None


class RolloutConfig(_Frozen):
    """Progressive rollout (issue 3 §6): step up each `interval` while every gate passes."""

    steps: tuple[Percent, ...]
    interval: Duration
    # The sliding window the gates read; the interval when not given.
    window: Duration | None = None
    on_failure: Literal["zero", "last_good"] = "zero"
    gates: Gates = Gates()

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value:
            raise ValueError("must list at least one step")
        if list(value) != sorted(set(value)):
            raise ValueError("must be strictly increasing")
        return value

    @property
    def window_s(self) -> float:
        return self.window if self.window is not None else self.interval


class AdminConfig(_Frozen):
    """The admin API; its token comes from SERVING_PROXY_ADMIN_TOKEN, never the file."""

    # Who the audit log says made a change through this token.
    token_name: str = "admin"


Version = Annotated[str, Field(pattern=VERSION_RE.pattern)]


class ModelConfig(_Frozen):
    """One served model (§1.2). Every key but `stages` has a default."""

    stages: dict[str, Version] = {}
    versions: tuple[Version, ...] | None = None
    endpoint: str | None = None
    route: Backend = Backend.SERVERLESS
    serverless: BackendOverride | None = None
    legacy: BackendOverride | None = None
    legacy_protocol: LegacyProtocol = LegacyProtocol.MLFLOW1
    accept_v2_bodies: bool = False
    csv_mode: CsvMode = CsvMode.PASSTHROUGH
    upstream_nan: UpstreamNan = UpstreamNan.KEEP
    legacy_wrapper_attr: str | None = None
    # Issue 3: the share of clients sent to serverless; `route` is shorthand for 0 or 100.
    serverless_percent: Percent | None = None
    shadow_percent: Percent = 0.0
    compare: CompareConfig = CompareConfig()
    rollout: RolloutConfig | None = None

    @property
    def initial_percent(self) -> float:
        """The configured serverless share, from `serverless_percent` or else `route`."""
        if self.serverless_percent is not None:
            return self.serverless_percent
        return 100.0 if self.route is Backend.SERVERLESS else 0.0

    @field_validator("versions", mode="before")
    @classmethod
    def _versions(cls, value: Any) -> Any:
        # YAML reads `versions: [1, 2]` as ints; a version is a URL segment, so a string.
        if isinstance(value, list | tuple):
            return tuple(str(v) if isinstance(v, int) else v for v in value)
        return value

    @field_validator("stages", mode="before")
    @classmethod
    def _stages(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: str(v) if isinstance(v, int) else v for k, v in value.items()}
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not NAME_RE.match(value):
            raise ValueError("must be letters, digits, '.', '_' or '-'")
        return value


class Limits(_Frozen):
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1)
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1)


class ServerConfig(_Frozen):
    """How uvicorn runs the app."""

    workers: int = Field(1, ge=1)
    graceful_shutdown_s: float = Field(DEFAULT_GRACEFUL_SHUTDOWN_S, ge=0)
    # Peers whose X-Forwarded-For is believed (uvicorn's forwarded_allow_ips).
    trusted_proxies: tuple[str, ...] = ()
    # The upstream HTTP client: the proxy's own on httptools (the default; proxy.http1 says
    # why), or aiohttp's, kept selectable as a fallback.
    upstream_client: Literal["httptools", "aiohttp"] = "httptools"


class LoggingConfig(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True


class ReportingConfig(_Frozen):
    """Latency and migration reporting (issue 4); the access log is under `logging:`.

    `metrics` is Prometheus `/metrics`; `stats` the HDR windows behind `/admin/report` and
    `/admin/dashboard`. Defaults mirror `proxy.stats.StatsSettings`.
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

    @model_validator(mode="after")
    def _slot_fits(self) -> ReportingConfig:
        if self.slot > self.window:
            raise ValueError("slot: must not be longer than window")
        return self


class ProxyConfig(_Frozen):
    """The root of proxy.yaml."""

    listen: Listen = Listen()
    backends: Backends
    models: dict[str, ModelConfig]
    limits: Limits = Limits()
    server: ServerConfig = ServerConfig()
    logging: LoggingConfig = LoggingConfig()
    # Issue 3: a SQLite path (relative: beside the config file) or redis://host:port/db.
    state: str | None = None
    client_key: ClientKeyConfig = ClientKeyConfig()
    route_override: RouteOverrideConfig = RouteOverrideConfig()
    shadow: ShadowConfig = ShadowConfig()
    admin: AdminConfig = AdminConfig()
    reporting: ReportingConfig = ReportingConfig()
    # Issue 5: a capped sample of real legacy requests, for load tests to replay. Off.
    recording: RecordingConfig = RecordingConfig()
    # Filled from the environment by load_config, never from the file.
    secrets: dict[str, SecretStr] = Field(default_factory=dict, exclude=True)

    @field_validator("models", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        # `iris:` with nothing under it is a model with every default.
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _cross_check(self) -> ProxyConfig:
        if self.backends.serverless is None:
            raise ValueError("backends.serverless: is required")
        endpoints: dict[str, str] = {}
        for name, model in self.models.items():
            where = f"models.{name}"
            if not NAME_RE.match(name):
                raise ValueError(f"{where}: a model name must be letters, digits, '.', '_', '-'")
            if model.route is Backend.LEGACY and self.backends.legacy is None:
                raise ValueError(
                    f"{where}.route: routes to legacy, but backends.legacy is not configured "
                    "(protocols.md §1.4)"
                )
            if "route" in model.model_fields_set and model.serverless_percent is not None:
                raise ValueError(
                    f"{where}: give route or serverless_percent, not both (route is "
                    "shorthand for serverless_percent 0 or 100)"
                )
            needs_legacy = model.initial_percent < 100 or model.shadow_percent > 0 or model.rollout
            if needs_legacy and self.backends.legacy is None:
                raise ValueError(
                    f"{where}: a weight under 100, shadow_percent or rollout needs backends.legacy"
                )
            if model.legacy is not None and self.backends.legacy is None:
                raise ValueError(f"{where}.legacy: overrides a backend that is not configured")
            if model.versions is not None:
                for stage, version in model.stages.items():
                    if version not in model.versions:
                        raise ValueError(
                            f"{where}.stages.{stage}: version {version} is not in versions"
                        )
            endpoint = model.endpoint or name
            if endpoint in endpoints:
                raise ValueError(
                    f"{where}.endpoint: '{endpoint}' is also the endpoint of "
                    f"models.{endpoints[endpoint]}"
                )
            endpoints[endpoint] = name
        return self

    def token_envs(self) -> set[str]:
        """Every environment variable the config names for a secret."""
        names: set[str] = set()
        for backend in (self.backends.legacy, self.backends.serverless):
            if backend is not None and backend.token_env:
                names.add(backend.token_env)
        for model in self.models.values():
            for override in (model.serverless, model.legacy):
                if override is not None and override.token_env:
                    names.add(override.token_env)
        return names


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def parse_config(data: Any, environ: Mapping[str, str], source: str = "<config>") -> ProxyConfig:
    """Validate a parsed YAML document and read the secrets it names from `environ`.

    Raises:
        ConfigError: naming the file and the key.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping")
    try:
        config = ProxyConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: invalid config"]
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"  {_where(err['loc'])}: {msg}" if err["loc"] else f"  {msg}")
        raise ConfigError("\n".join(lines)) from None
    secrets: dict[str, SecretStr] = {}
    for env in sorted(config.token_envs()):
        value = environ.get(env)
        if not value:
            raise ConfigError(
                f"{source}: token_env names {env}, but that environment variable is not set"
            )
        secrets[env] = SecretStr(value)
    admin_token = environ.get(ADMIN_TOKEN_ENV)
    if admin_token:
        secrets[ADMIN_TOKEN_ENV] = SecretStr(admin_token)
    return config.model_copy(update={"secrets": secrets})


def load_config(path: str | Path, environ: Mapping[str, str]) -> ProxyConfig:
    """Read and validate a YAML config file (architecture §1.6).

    Raises:
        ConfigError: the file is unreadable, not YAML, or not a valid config.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    config = parse_config(data, environ, source)
    # A config read from a file keeps its cutover state in a file beside it by default;
    # a config built in memory (tests, embedding) keeps it in memory (state None).
    state = config.state or DEFAULT_STATE_FILE
    if "://" not in state and state != ":memory:":
        state = str((Path(path).resolve().parent / state).resolve())
    return config.model_copy(update={"state": state})
