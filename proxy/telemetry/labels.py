"""How reports, metrics and the access log name a client: a keyed hash of its client key.

The key of the hash is one secret per deployment, so every worker and replica gives a
client the same label: `reporting.label_key_env` names it, or else the state store
generates it once and hands the same one to every process that asks
(`deployment_secret`). Until the store has answered, and if it cannot, the labels are
keyed by a secret of this process alone: consistent here, never an unkeyed hash.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

from proxy.config import ProxyConfig
from proxy.cutover.store import StateError
from proxy.routing import ClientKey, report_label

LOGGER = logging.getLogger("serving_proxy")
SECRET_BYTES = 32


class SecretStore(Protocol):
    async def deployment_secret(self) -> bytes: ...


class ClientLabels:
    """Names clients with `routing.report_label` under the deployment's secret.

    Args:
        secret: the configured secret (`reporting.label_key_env`), or None to take the
            state store's (`adopt`).
        show_header: a key read from `client_key.header` is shown as sent.
    """

    def __init__(self, secret: bytes | None, *, show_header: bool = False) -> None:
        self.configured = secret is not None
        self.secret = secret if secret is not None else os.urandom(SECRET_BYTES)
        self.show_header = show_header

    @classmethod
    def from_config(cls, config: ProxyConfig) -> ClientLabels:
        env = config.reporting.label_key_env
        secret = None if env is None else config.secrets[env].get_secret_value().encode()
        return cls(secret, show_header=config.reporting.show_client_header)

    def __call__(self, key: ClientKey) -> str:
        return report_label(key, self.secret, show_header=self.show_header)

    async def adopt(self, store: SecretStore) -> None:
        """Key the labels with the store's secret, unless one is configured.

        A store that cannot answer costs only the labels' agreement across processes,
        never the start-up: it is logged, and this process's own secret stays.
        """
        if self.configured:
            return
        try:
            self.secret = await store.deployment_secret()
        except StateError as exc:
            LOGGER.warning(
                "client labels are keyed by this process only (the state store gave no "
                "deployment secret: %s); set reporting.label_key_env to share one",
                exc,
            )

    def __repr__(self) -> str:
        return f"ClientLabels(configured={self.configured}, show_header={self.show_header})"
