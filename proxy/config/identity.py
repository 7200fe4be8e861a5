"""`client_auth:`: how a client proves who it is before the proxy lends it credentials. Pure.

`none` says the network in front of the proxy is trusted; `tokens` checks the client's
bearer token against SHA-256 digests in a file; `databricks` asks the workspace who the
client's own Databricks token belongs to (SCIM `Me`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import model_validator

from proxy.config.base import Duration, Frozen

DEFAULT_TTL_S = 300.0
DEFAULT_NEGATIVE_TTL_S = 30.0
DEFAULT_LOOKUP_TIMEOUT_S = 5.0


class AllowConfig(Frozen):
    """Who may call once proven; both empty: every proven client. A client passes when its
    name is in `users` or one of its SCIM groups is in `groups`."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    @property
    def anyone(self) -> bool:
        return not self.users and not self.groups


class ClientAuthConfig(Frozen):
    """The `client_auth:` section."""

    mode: Literal["none", "tokens", "databricks"]
    # `tokens`: one `name:sha256hex` a line; read at start-up, re-read when it changes.
    tokens_file: Path | None = None
    # `databricks`: the workspace asked (default: the serverless backend's URL).
    host: str | None = None
    ttl_s: Duration = DEFAULT_TTL_S
    negative_ttl_s: Duration = DEFAULT_NEGATIVE_TTL_S
    timeout_s: Duration = DEFAULT_LOOKUP_TIMEOUT_S
    allow: AllowConfig = AllowConfig()

    @model_validator(mode="after")
    def _mode_keys(self) -> ClientAuthConfig:
        if self.mode == "tokens" and self.tokens_file is None:
            raise ValueError("mode tokens needs tokens_file")
        if self.mode != "tokens" and self.tokens_file is not None:
            raise ValueError("tokens_file is read only in mode tokens")
        if self.mode != "databricks":
            extra = {"host", "ttl_s", "negative_ttl_s", "timeout_s"} & self.model_fields_set
            if extra:
                raise ValueError(f"{', '.join(sorted(extra))}: read only in mode databricks")
        if self.mode == "none" and not self.allow.anyone:
            raise ValueError("allow: needs a mode that proves who the client is")
        if self.host is not None and not self.host.startswith(("http://", "https://")):
            raise ValueError("host: must be an http:// or https:// URL")
        return self


# Named in the start-up refusal: the two ways to say who may use injected credentials.
REFUSAL = (
    "credentials are injected towards a backend, but client_auth is not set: anyone who "
    "can reach the proxy would call the endpoints as the proxy. Set client_auth: {mode: "
    "tokens | databricks} to prove clients first, or client_auth: {mode: none} to say "
    "explicitly that the network in front of the proxy is trusted"
)
