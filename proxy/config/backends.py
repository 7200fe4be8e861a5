"""Where the proxy listens and how it reaches its backends: `listen:`, `backends:`,
`limits:`, `server:`. Pure."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from proxy.config.base import EnvName, Frozen
from proxy.config.resilience import ColdStartConfig, RetryConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_CONNECT_TIMEOUT_S = 5.0
# protocols.md §8.9: 1.x clients saw gunicorn's 60 s worker timeout.
DEFAULT_TOTAL_TIMEOUT_S = 60.0
# protocols.md §4.2 / D-limits: 16 MB per request on legacy and GA serving.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_IN_FLIGHT = 1024
DEFAULT_POOL_SIZE = 100
DEFAULT_MAX_REPLY_BYTES = 64 * 1024 * 1024
DEFAULT_HEADER_BYTES = 64 * 1024
DEFAULT_HEAD_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_MAX_CONNECTIONS = 4096
# 1.30.1 had none of these: pandas would take any shape a body described. They bound
# the work one request can cause, and are configurable for models that need more.
DEFAULT_MAX_COLUMNS = 16_384
DEFAULT_MAX_CELLS = 10_000_000
DEFAULT_MAX_DEPTH = 100
# The deepest JSON the proxy handles whatever `max_depth` says. orjson refuses past 1024
# levels, and the stdlib's parser and encoder (NaN bodies, integers beyond 64 bits, every
# reply) spend one frame of Python's recursion limit (1000) per level, shared with the
# frames of the server below them.
DEPTH_CEILING = 512
DEFAULT_OFFLOAD_BYTES = 1024 * 1024
DEFAULT_MEMORY_WAIT_S = 10.0
DEFAULT_GRACEFUL_SHUTDOWN_S = 30.0
PATH_FIELDS = frozenset({"name", "version", "endpoint"})
# A replica id names the process in logs, the store's keys and the admin API: a pod name,
# a host name or `host:port`, nothing a log line or a Redis key would need to quote.
REPLICA_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}")


class Listen(Frozen):
    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)


class Timeouts(Frozen):
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


# `auth: databricks`: the Databricks SDK's unified auth, with the backend's URL as host.
DATABRICKS = "databricks"
SHORTHAND_CLASH = (
    "auth: give either `auth` or its shorthand `token_env`, not both "
    "(`token_env: NAME` means `auth: {token_env: NAME}`)"
)


class TokenAuth(Frozen):
    """`auth: {token_env: NAME}`: a static bearer token read from the environment."""

    token_env: EnvName


# What a backend sends of the proxy's own: None passes the client's Authorization through.
Auth = Literal["databricks"] | TokenAuth


def _normalise_auth(section: BackendConfig | BackendOverride) -> None:
    """`token_env: NAME` is the shorthand of `auth: {token_env: NAME}`; after validation
    `auth` is the one key a reader asks."""
    if section.token_env is not None:
        if section.auth is not None:
            raise ValueError(SHORTHAND_CLASH)
        # Frozen models: set once, during validation, before anyone reads it. The shorthand
        # is emptied, so a dump of the config validates again.
        object.__setattr__(section, "auth", TokenAuth(token_env=section.token_env))
        object.__setattr__(section, "token_env", None)


def _check_template(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must start with '/'")
    fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    unknown = fields - PATH_FIELDS
    if unknown:
        raise ValueError(f"may only use {{name}}, {{version}}, {{endpoint}}; got {sorted(unknown)}")
    return value


class BackendConfig(Frozen):
    """One upstream. `path` is a template for the serverless side (§1.1, §1.2)."""

    url: str
    path: str | None = None
    auth: Auth | None = None
    # The shorthand of `auth: {token_env: ...}`, moved there by validation (then None).
    token_env: EnvName | None = None
    timeout: Timeouts = Timeouts()
    # A hard bound on open connections to this origin; callers beyond it wait for one.
    pool_size: int = Field(DEFAULT_POOL_SIZE, ge=1)
    # A reply (after decompression) larger than this is refused as a protocol error.
    max_reply_bytes: int = Field(DEFAULT_MAX_REPLY_BYTES, ge=1)
    # Whether a request whose bytes were written may be sent again when the connection
    # closes without an answer; off, because the model may already have run.
    retry_after_write: bool = False
    # Pass-through replies keep the upstream's Set-Cookie only when this says so.
    pass_set_cookie: bool = False
    # Honour HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment (egress proxies).
    trust_env: bool = True
    # Unset: on for the serverless backend (`RetryConfig()`), off for legacy (`NO_RETRY`).
    retry: RetryConfig | None = None
    cold_start: ColdStartConfig = ColdStartConfig()

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_url(value)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else _check_template(value)

    @model_validator(mode="after")
    def _auth(self) -> Self:
        _normalise_auth(self)
        return self


class BackendOverride(Frozen):
    """A model's override of some of a backend's keys."""

    url: str | None = None
    path: str | None = None
    auth: Auth | None = None
    # The shorthand of `auth: {token_env: ...}`, moved there by validation (then None).
    token_env: EnvName | None = None
    timeout: Timeouts | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else _check_template(value)

    @model_validator(mode="after")
    def _auth(self) -> Self:
        _normalise_auth(self)
        return self


class Backends(Frozen):
    legacy: BackendConfig | None = None
    serverless: BackendConfig | None = None


class Limits(Frozen):
    """What one client, one connection or one request may cost the proxy.

    Every limit answers the client in the shape it speaks; README "Limits and hardening"
    lists what each one answers.
    """

    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1)
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1)
    # The request line and headers together; over it 431 (the request line alone: 414).
    header_bytes: int = Field(DEFAULT_HEADER_BYTES, ge=1024)
    # A head must arrive whole within this; a body within `body_timeout_s` (else 408).
    head_timeout_s: float = Field(DEFAULT_HEAD_TIMEOUT_S, gt=0)
    body_timeout_s: float = Field(DEFAULT_BODY_TIMEOUT_S, gt=0)
    max_connections: int = Field(DEFAULT_MAX_CONNECTIONS, ge=1)
    max_columns: int = Field(DEFAULT_MAX_COLUMNS, ge=1)
    max_cells: int = Field(DEFAULT_MAX_CELLS, ge=1)
    max_depth: int = Field(DEFAULT_MAX_DEPTH, ge=2, le=DEPTH_CEILING)
    # Bodies at least this large are translated off the event loop.
    offload_bytes: int = Field(DEFAULT_OFFLOAD_BYTES, ge=1)
    # Bodies in flight are admitted against this; default: a quarter of the memory the
    # process may use (the cgroup limit in a container, else the machine's).
    memory_budget_mb: int | None = Field(None, ge=1)
    # How long a body may wait for room in the budget before 503 `Overloaded`.
    memory_wait_s: float = Field(DEFAULT_MEMORY_WAIT_S, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _default_wait_within_body_deadline(cls, data: Any) -> Any:
        # Unset, the wait fits inside a shortened body deadline instead of refusing it.
        if isinstance(data, dict) and "memory_wait_s" not in data:
            body_timeout = data.get("body_timeout_s", DEFAULT_BODY_TIMEOUT_S)
            if isinstance(body_timeout, int | float) and body_timeout > 0:
                return {**data, "memory_wait_s": min(DEFAULT_MEMORY_WAIT_S, body_timeout / 2)}
        return data

    @model_validator(mode="after")
    def _wait_within_body_deadline(self) -> Limits:
        # A body still waiting for room when its deadline passes would get 408, not 503.
        if self.memory_wait_s >= self.body_timeout_s:
            raise ValueError("memory_wait_s: must be shorter than body_timeout_s")
        return self


class ServerConfig(Frozen):
    """How uvicorn runs the app."""

    workers: int = Field(1, ge=1)
    graceful_shutdown_s: float = Field(DEFAULT_GRACEFUL_SHUTDOWN_S, ge=0)
    # Peers whose X-Forwarded-For is believed (uvicorn's forwarded_allow_ips).
    trusted_proxies: tuple[str, ...] = ()
    # The upstream HTTP client: the proxy's own on httptools (the default;
    # proxy.upstream.http1 says why), or aiohttp's, kept selectable as a fallback.
    upstream_client: Literal["httptools", "aiohttp"] = "httptools"
    # This replica's name in the access log, `/readyz`, the store and the admin API
    # (default: `replica_id_of` below).
    replica_id: str | None = None

    @field_validator("replica_id")
    @classmethod
    def _replica_id(cls, value: str | None) -> str | None:
        if value is not None and not REPLICA_ID_RE.fullmatch(value):
            raise ValueError("must be letters, digits, '.', '_', ':', '@' or '-' (at most 253)")
        return value


def replica_id_of(server: ServerConfig, listen: Listen, environ: Mapping[str, str]) -> str:
    """This replica's id: `server.replica_id`, else `HOSTNAME` (the pod's name in
    Kubernetes), else the listener's `host:port`. A `HOSTNAME` that is no valid id is
    passed over rather than trusted into log lines and store keys."""
    if server.replica_id is not None:
        return server.replica_id
    hostname = environ.get("HOSTNAME", "")
    if REPLICA_ID_RE.fullmatch(hostname):
        return hostname
    return f"{listen.host}:{listen.port}"
