"""Where the proxy listens and how it reaches its backends: `listen:`, `backends:`,
`limits:`, `server:`. Pure."""

from __future__ import annotations

import re
import string
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from proxy.config.base import Frozen

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
PATH_FIELDS = frozenset({"name", "version", "endpoint"})
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


class BackendOverride(Frozen):
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


class Backends(Frozen):
    legacy: BackendConfig | None = None
    serverless: BackendConfig | None = None


class Limits(Frozen):
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1)
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1)


class ServerConfig(Frozen):
    """How uvicorn runs the app."""

    workers: int = Field(1, ge=1)
    graceful_shutdown_s: float = Field(DEFAULT_GRACEFUL_SHUTDOWN_S, ge=0)
    # Peers whose X-Forwarded-For is believed (uvicorn's forwarded_allow_ips).
    trusted_proxies: tuple[str, ...] = ()
    # The upstream HTTP client: the proxy's own on httptools (the default;
    # proxy.upstream.http1 says why), or aiohttp's, kept selectable as a fallback.
    upstream_client: Literal["httptools", "aiohttp"] = "httptools"
