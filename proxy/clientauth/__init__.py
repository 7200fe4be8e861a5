"""Who the client is, proven before the proxy lends it the credentials it injects.

`client_auth: tokens` matches the client's bearer token against SHA-256 digests in a file
(`tokenfile.TokenFile`); `client_auth: databricks` asks the workspace whose token it is
(`workspace.DatabricksIdentity`, SCIM `Me` made with the client's own token). Both give an
`Identity` (`identity`), and `ClientAuth.authenticate` turns every refusal into
`ClientUnauthorized` (401) and every look-up that could not be made into
`IdentityUnavailable` (503): an unproven client is never let through.

A token never leaves this package: no log line, error or `repr` holds it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NoReturn

from proxy.clientauth.identity import Identity, allowed, authorization, bearer_token
from proxy.clientauth.tokenfile import TokenFile
from proxy.clientauth.workspace import DatabricksIdentity
from proxy.config import ProxyConfig
from proxy.config.identity import AllowConfig, ClientAuthConfig
from proxy.errors import ClientUnauthorized

__all__ = ["ClientAuth", "Identity", "build_client_auth"]

LOGGER = logging.getLogger("serving_proxy")


class ClientAuth:
    """`client_auth` in `tokens` or `databricks` mode: `authenticate` proves a request's
    client or raises; `mode: none` builds none of this (`build_client_auth`)."""

    def __init__(
        self,
        allow: AllowConfig,
        *,
        tokens: TokenFile | None = None,
        databricks: DatabricksIdentity | None = None,
    ) -> None:
        assert (tokens is None) != (databricks is None)
        self.allow = allow
        self.tokens = tokens
        self.databricks = databricks

    async def authenticate(
        self, headers: Iterable[tuple[bytes, bytes]], request_id: str
    ) -> Identity:
        """The proven client of a request.

        Raises:
            ClientUnauthorized: no bearer token, a token nobody knows, or a client
                `allow` does not list; one log line says which, never the token.
            IdentityUnavailable: the workspace could not be asked.
        """
        value = authorization(headers)
        tokens = self.tokens
        if tokens is not None and value is not None:
            tokens.check()
            identity = tokens.proven.get(value)
            if identity is not None:
                return identity
        token = bearer_token(value)
        if token is None:
            _refuse("no bearer token", request_id)
        if tokens is not None:
            identity = tokens.identify(token)
        else:
            assert self.databricks is not None
            identity = await self.databricks.identify(token)
        if identity is None:
            _refuse("unknown token", request_id)
        if not allowed(identity, self.allow):
            _refuse(f"{identity.name} is not in client_auth.allow", request_id)
        if tokens is not None and value == b"Bearer " + token.encode("latin-1"):
            # Only the usual spelling: padded or re-cased variants of one token would each
            # take an entry, and a client could fill memory with them.
            tokens.remember(value, identity)
        return identity

    async def aclose(self) -> None:
        if self.databricks is not None:
            await self.databricks.aclose()

    def __repr__(self) -> str:
        return f"ClientAuth({self.tokens or self.databricks!r})"


def _refuse(reason: str, request_id: str) -> NoReturn:
    LOGGER.warning("client refused: %s (request %s)", reason, request_id)
    raise ClientUnauthorized()


def build_client_auth(config: ProxyConfig) -> ClientAuth | None:
    """The configured client check; None when clients are not asked to prove anything.

    Raises:
        ConfigError: the tokens file cannot be read or has a bad line.
    """
    section: ClientAuthConfig | None = config.client_auth
    if section is None or section.mode == "none":
        return None
    if section.mode == "tokens":
        assert section.tokens_file is not None
        return ClientAuth(section.allow, tokens=TokenFile(section.tokens_file))
    serverless = config.backends.serverless
    assert serverless is not None  # the config refuses a config without it
    host = section.host or serverless.url
    return ClientAuth(
        section.allow,
        databricks=DatabricksIdentity(
            host,
            ttl_s=section.ttl_s,
            negative_ttl_s=section.negative_ttl_s,
            timeout_s=section.timeout_s,
        ),
    )
