"""The credentials the proxy injects towards a backend (protocols.md §7.1 `inject`).

A `TokenSource` is the seam: the request path asks it for a bearer token per call and
never learns where the token came from. Today the only source is a static token read
from the environment at start-up (`token_env`); a source that fetches and refreshes
tokens (OAuth machine-to-machine) plugs in here without touching the exchange.
No token ever reaches a log line through a `repr`.
"""

from __future__ import annotations

from dataclasses import dataclass
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


# Per configured model: the source for its serverless side, or None to pass the client's
# own Authorization through (§7.1 `passthrough`). The legacy side never gets one (§7.2).
Credentials = dict[str, TokenSource | None]


def _token_env(base: BackendConfig, override: BackendOverride | None) -> str | None:
    return (override.token_env if override and override.token_env else None) or base.token_env


def build_credentials(config: ProxyConfig) -> Credentials:
    """Each model's serverless token source, from the secrets read at start-up."""
    serverless = config.backends.serverless
    assert serverless is not None  # ProxyConfig's validator requires it
    out: Credentials = {}
    for name, model in config.models.items():
        env = _token_env(serverless, model.serverless)
        out[name] = StaticToken(config.secrets[env].get_secret_value()) if env else None
    return out
