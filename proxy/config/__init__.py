"""The proxy's typed configuration: a YAML file validated once at start-up, frozen after.

Pure except for the one file read in `load_config`. Secrets never live in the file: the
file names environment variables (`token_env`), read through the injected `environ`.
The root and the models are here; each group of sections has a module of its own
(`backends`, `cutover`, `telemetry`), sharing `base`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from proxy.config.backends import (
    BackendConfig,
    BackendOverride,
    Backends,
    Limits,
    Listen,
    ServerConfig,
    TokenAuth,
)
from proxy.config.base import NAME_RE, VERSION_RE, Frozen, Percent
from proxy.config.cutover import (
    ClientKeyConfig,
    CompareConfig,
    FleetConfig,
    RedisConfig,
    RolloutConfig,
    RouteOverrideConfig,
    ShadowConfig,
    url_has_password,
)
from proxy.config.identity import REFUSAL, ClientAuthConfig
from proxy.config.resilience import (
    NO_RETRY,
    ColdStartConfig,
    QueueConfig,
    RetryBudgetConfig,
    RetryConfig,
)
from proxy.config.telemetry import (
    LoggingConfig,
    MetricsConfig,
    RecordingConfig,
    ReportingConfig,
)
from proxy.models import Backend, CsvMode, LegacyProtocol, UpstreamNan

# Run-time cutover state: a SQLite file beside the config unless `state:` says otherwise.
DEFAULT_STATE_FILE = "serving-proxy-state.sqlite3"
ADMIN_TOKEN_ENV = "SERVING_PROXY_ADMIN_TOKEN"
# A shorter bearer token can be guessed; 32 characters is what `openssl rand -hex 16` gives.
MIN_ADMIN_TOKEN_CHARS = 32


class ConfigError(Exception):
    """The config cannot be used; the message names the file and the key."""


class AdminConfig(Frozen):
    """The admin API; its token comes from SERVING_PROXY_ADMIN_TOKEN, never the file."""

    # Who the audit log says made a change through this token.
    token_name: str = "admin"


Version = Annotated[str, Field(pattern=rf"^{VERSION_RE.pattern}$")]


class ModelConfig(Frozen):
    """One served model (§1.2). Every key but `stages` has a default."""

    stages: dict[str, Version] = Field(default_factory=dict)
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
    # The share of clients sent to serverless; `route` is shorthand for 0 or 100.
    serverless_percent: Percent | None = None
    shadow_percent: Percent = 0.0
    compare: CompareConfig = CompareConfig()
    rollout: RolloutConfig | None = None
    # The serverless side's retries and cold-start hold for this model (default: the
    # serverless backend's).
    retry: RetryConfig | None = None
    cold_start: ColdStartConfig | None = None
    # Requests of this model in flight at once (default: only `limits.max_in_flight`);
    # beyond it they wait in `queue`.
    max_in_flight: int | None = Field(None, ge=1)
    queue: QueueConfig = QueueConfig()
    # `legacy`: a legacy client's request the serverless side did not process (429, 503,
    # a connection failure, a spent cold-start hold) goes to the legacy backend, once.
    fallback: Literal["legacy"] | None = None

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
        if value is not None and not NAME_RE.fullmatch(value):
            raise ValueError("must be letters, digits, '.', '_' or '-'")
        return value


class ProxyConfig(Frozen):
    """The root of proxy.yaml."""

    listen: Listen = Listen()
    backends: Backends
    models: dict[str, ModelConfig]
    limits: Limits = Limits()
    server: ServerConfig = ServerConfig()
    logging: LoggingConfig = LoggingConfig()
    # Shared cutover state: a SQLite path (relative: beside the config file) or
    # redis://host:port/db, so that every worker and replica routes alike.
    state: str | None = None
    redis: RedisConfig = RedisConfig()
    # The replicas' rollout leader (and what else they share beyond `state:`).
    cutover: FleetConfig = FleetConfig()
    client_key: ClientKeyConfig = ClientKeyConfig()
    # Who may use the proxy; required once credentials are injected towards a backend.
    client_auth: ClientAuthConfig | None = None
    route_override: RouteOverrideConfig = RouteOverrideConfig()
    shadow: ShadowConfig = ShadowConfig()
    admin: AdminConfig = AdminConfig()
    reporting: ReportingConfig = ReportingConfig()
    metrics: MetricsConfig = MetricsConfig()
    # A capped sample of real legacy requests, for load tests to replay. Off.
    recording: RecordingConfig = RecordingConfig()
    # The extra load retries may add, proxy-wide.
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
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
            if not NAME_RE.fullmatch(name):
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
            if model.fallback == "legacy" and self.backends.legacy is None:
                raise ValueError(
                    f"{where}.fallback: falls back to legacy, but backends.legacy is not configured"
                )
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
        if self.client_auth is None and self.injects_credentials():
            raise ValueError(REFUSAL)
        if self.redis.password_env and self.state and url_has_password(self.state):
            raise ValueError(
                "redis.password_env: the state URL carries a password as well; give it in "
                "one place (the environment variable keeps it out of the file)"
            )
        return self

    def retry_for(self, model: str, backend: Backend) -> RetryConfig:
        """The retry policy of one model's requests to one backend: the model's own for
        its serverless side, else the backend's, else on for serverless and off for
        legacy (pass-through stays byte-exact)."""
        if backend is Backend.SERVERLESS:
            own = self.models[model].retry
            if own is not None:
                return own
            configured = self.backends.serverless
            return configured.retry if configured and configured.retry else RetryConfig()
        configured = self.backends.legacy
        return configured.retry if configured and configured.retry else NO_RETRY

    def cold_start_for(self, model: str, backend: Backend) -> ColdStartConfig:
        """The cold-start hold of one model's requests to one backend (the model's own
        applies to its serverless side)."""
        if backend is Backend.SERVERLESS:
            own = self.models[model].cold_start
            if own is not None:
                return own
            configured = self.backends.serverless
        else:
            configured = self.backends.legacy
        return configured.cold_start if configured else ColdStartConfig()

    def injects_credentials(self) -> bool:
        """Whether any backend or model override sends credentials of the proxy's own
        (a token, or any `auth` method) instead of the client's."""
        sections: list[Any] = [self.backends.legacy, self.backends.serverless]
        for model in self.models.values():
            sections += [model.serverless, model.legacy]
        return any(
            section is not None
            and (
                getattr(section, "token_env", None) is not None
                or getattr(section, "auth", None) is not None
            )
            for section in sections
        )

    def token_envs(self) -> set[str]:
        """Every environment variable the config names for a secret."""
        names: set[str] = set()
        sections: list[BackendConfig | BackendOverride | None] = [
            self.backends.legacy,
            self.backends.serverless,
        ]
        for model in self.models.values():
            sections += [model.serverless, model.legacy]
        for section in sections:
            # `auth` holds `token_env` too once validated (its shorthand).
            if section is not None and isinstance(section.auth, TokenAuth):
                names.add(section.auth.token_env)
        for env in (
            self.metrics.token_env,
            self.redis.password_env,
            self.reporting.label_key_env,
        ):
            if env:
                names.add(env)
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
                f"{source}: the config names {env} for a secret, but that environment "
                "variable is not set"
            )
        secrets[env] = SecretStr(value)
    admin_token = environ.get(ADMIN_TOKEN_ENV)
    if admin_token:
        if len(admin_token) < MIN_ADMIN_TOKEN_CHARS:
            raise ConfigError(
                f"{source}: {ADMIN_TOKEN_ENV} is {len(admin_token)} characters long; an "
                f"admin token needs at least {MIN_ADMIN_TOKEN_CHARS} (`openssl rand -hex 32`)"
            )
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
    beside = Path(path).resolve().parent
    state = config.state or DEFAULT_STATE_FILE
    if "://" not in state and state != ":memory:":
        state = str((beside / state).resolve())
    update: dict[str, Any] = {"state": state}
    # Relative file names in the file mean beside it, whatever the working directory.
    client_auth = config.client_auth
    if client_auth is not None and client_auth.tokens_file is not None:
        tokens_file = (beside / client_auth.tokens_file).resolve()
        update["client_auth"] = client_auth.model_copy(update={"tokens_file": tokens_file})
    return config.model_copy(update=update)
