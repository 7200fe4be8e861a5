"""Where each configured model's requests go: origin, path, credentials, pool. Pure.

Built once from the validated config, so a request can only ever reach an origin and a
path template that the config named (protocols.md §1.2: config, never string rewriting).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import BackendConfig, BackendOverride, ProxyConfig
from proxy.models import Backend
from proxy.upstream import UpstreamSettings

# §1.1: the GA URL shape, for a serverless backend configured without a path.
DEFAULT_SERVERLESS_PATH = "/serving-endpoints/{endpoint}/invocations"


@dataclass(frozen=True, slots=True)
class Target:
    """One model's side: the pool to use, the path to call, the token to inject."""

    backend: Backend
    settings: UpstreamSettings
    # None: forward the client's own path (legacy pass-through, §1.4).
    path_template: str | None
    token: str | None

    def __repr__(self) -> str:
        # Never let a token reach a log line through a repr.
        token = "'***'" if self.token else "None"
        return (
            f"Target(backend={self.backend!s}, origin={self.settings.origin!r}, "
            f"path_template={self.path_template!r}, token={token})"
        )


@dataclass(frozen=True, slots=True)
class ModelTargets:
    serverless: Target
    legacy: Target | None


def _target(
    backend: Backend,
    base: BackendConfig,
    override: BackendOverride | None,
    config: ProxyConfig,
    default_path: str | None,
) -> Target:
    url = (override.url if override and override.url else None) or base.url
    path = (override.path if override and override.path else None) or base.path or default_path
    token_env = (override.token_env if override and override.token_env else None) or base.token_env
    timeout = (override.timeout if override and override.timeout else None) or base.timeout
    token = config.secrets[token_env].get_secret_value() if token_env else None
    settings = UpstreamSettings(
        origin=url,
        connect_timeout_s=timeout.connect,
        total_timeout_s=timeout.total,
        pool_size=base.pool_size,
        decompress=backend is Backend.SERVERLESS,
    )
    return Target(backend, settings, path, token)


def build_targets(config: ProxyConfig) -> dict[str, ModelTargets]:
    """Resolve every model's serverless and legacy side from the config."""
    serverless = config.backends.serverless
    assert serverless is not None  # ProxyConfig's validator requires it
    legacy = config.backends.legacy
    out: dict[str, ModelTargets] = {}
    for name, model in config.models.items():
        out[name] = ModelTargets(
            serverless=_target(
                Backend.SERVERLESS, serverless, model.serverless, config, DEFAULT_SERVERLESS_PATH
            ),
            legacy=None
            if legacy is None
            else _target(Backend.LEGACY, legacy, model.legacy, config, None),
        )
    return out
