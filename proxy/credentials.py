"""The credentials the proxy injects towards a backend (protocols.md §7.1 `inject`, §7.2).

A `TokenSource` is the seam: the request path asks it for a bearer token per call and
never learns where the token came from. Today the only source is a static token read
from the environment at start-up (`token_env`); a source that fetches and refreshes
tokens (OAuth machine-to-machine) plugs in here without touching the exchange.
No token ever reaches a log line through a `repr`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from proxy.config import ProxyConfig
from proxy.config.backends import BackendConfig, BackendOverride


class TokenSource(Protocol):
    """Gives the bearer token to send with the next call."""

    def token(self) -> str: ...


@dataclass(frozen=True, slots=True)
class StaticToken:
    """A token fixed for the process's life (a personal access token in an env var)."""

    value: str

    def token(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return "StaticToken('***')"


Sources = Mapping[str, TokenSource | None]


@dataclass(frozen=True, slots=True)
class Credentials:
    """Per configured model and backend: the token source, or None to pass the client's
    own Authorization through (§7.1 `passthrough`; §7.2 for legacy).

    A legacy backend (or a model's legacy override) with `token_env` gets its token
    injected like serverless `inject`: the token is what the legacy workspace accepts,
    and the client's own credential then never leaves the proxy.
    """

    serverless: Sources
    legacy: Sources = field(default_factory=dict)


def _token_env(base: BackendConfig, override: BackendOverride | None) -> str | None:
    return (override.token_env if override and override.token_env else None) or base.token_env


def build_credentials(config: ProxyConfig) -> Credentials:
    """Each model's token sources for both backends, from the secrets read at start-up."""
    serverless = config.backends.serverless
    assert serverless is not None  # ProxyConfig's validator requires it
    legacy = config.backends.legacy

    def source(env: str | None) -> TokenSource | None:
        return StaticToken(config.secrets[env].get_secret_value()) if env else None

    return Credentials(
        serverless={
            name: source(_token_env(serverless, model.serverless))
            for name, model in config.models.items()
        },
        legacy={
            name: source(_token_env(legacy, model.legacy))
            for name, model in config.models.items()
            if legacy is not None
        },
    )
