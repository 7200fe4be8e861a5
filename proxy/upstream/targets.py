"""Where each configured model's requests go: origin, path and pool settings. Pure.

Built once from the validated config, so a request can only ever reach an origin and a
path template that the config named (protocols.md §1.2: config, never string rewriting).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import ProxyConfig
from proxy.config.backends import BackendConfig, BackendOverride
from proxy.models import Backend
from proxy.resilience import Policy, policy_of
from proxy.upstream.base import UpstreamSettings

# §1.1: the GA URL shape, for a serverless backend configured without a path.
DEFAULT_SERVERLESS_PATH = "/serving-endpoints/{endpoint}/invocations"


@dataclass(frozen=True, slots=True)
class Target:
    """One model's side: the pool settings to use and the path to call. The credentials
    sent with it are `proxy.credentials`' to give."""

    backend: Backend
    settings: UpstreamSettings
    # None: forward the client's own path (legacy pass-through, §1.4).
    path_template: str | None
    # Pass-through replies keep the upstream's Set-Cookie (`backends.*.pass_set_cookie`).
    pass_set_cookie: bool = False
    # The clients' calls' retries and cold-start hold (`proxy.resilience`); None: neither,
    # and a call costs nothing extra.
    retry: Policy | None = None


@dataclass(frozen=True, slots=True)
class ModelTargets:
    serverless: Target
    legacy: Target | None
    # `fallback: legacy`: a legacy client's request the serverless side did not process
    # may go to `legacy` instead (`exchange.send`).
    fallback: bool = False


def _target(
    config: ProxyConfig,
    model: str,
    backend: Backend,
    base: BackendConfig,
    override: BackendOverride | None,
    default_path: str | None,
) -> Target:
    url = (override.url if override and override.url else None) or base.url
    path = (override.path if override and override.path else None) or base.path or default_path
    timeout = (override.timeout if override and override.timeout else None) or base.timeout
    settings = UpstreamSettings(
        origin=url,
        connect_timeout_s=timeout.connect,
        total_timeout_s=timeout.total,
        pool_size=base.pool_size,
        decompress=backend is Backend.SERVERLESS,
        max_reply_bytes=base.max_reply_bytes,
        retry_after_write=base.retry_after_write,
        trust_env=base.trust_env,
    )
    policy = policy_of(
        config.retry_for(model, backend), config.cold_start_for(model, backend), timeout.total
    )
    return Target(backend, settings, path, base.pass_set_cookie, policy)


def build_targets(config: ProxyConfig) -> dict[str, ModelTargets]:
    """Resolve every model's serverless and legacy side from the config."""
    serverless = config.backends.serverless
    assert serverless is not None  # ProxyConfig's validator requires it
    legacy = config.backends.legacy
    out: dict[str, ModelTargets] = {}
    for name, model in config.models.items():
        out[name] = ModelTargets(
            serverless=_target(
                config,
                name,
                Backend.SERVERLESS,
                serverless,
                model.serverless,
                DEFAULT_SERVERLESS_PATH,
            ),
            legacy=None
            if legacy is None
            else _target(config, name, Backend.LEGACY, legacy, model.legacy, None),
            fallback=model.fallback == "legacy" and legacy is not None,
        )
    return out
