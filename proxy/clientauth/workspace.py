"""`client_auth: databricks`: whose Databricks token this is, asked of the workspace (SCIM
`Me` made with the client's own token), the answers cached by an HMAC of the token under a
secret of this process."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from proxy.clientauth.identity import MAX_CACHED_TOKENS, Identity
from proxy.errors import IdentityUnavailable

LOGGER = logging.getLogger("serving_proxy")
SCIM_ME_PATH = "/api/2.0/preview/scim/v2/Me"
SECRET_BYTES = 32


def identity_of_me(body: Any) -> Identity | None:
    """The identity in a SCIM `Me` answer: a user's `userName`; a service principal's
    `applicationId` when the workspace gives no `userName`, else its `displayName`.
    Groups by their display name and id, so `allow.groups` may use either."""
    if not isinstance(body, dict):
        return None
    name = next(
        (
            body[key]
            for key in ("userName", "applicationId", "displayName")
            if isinstance(body.get(key), str) and body[key]
        ),
        None,
    )
    if name is None:
        return None
    groups: list[str] = []
    for group in body.get("groups") or ():
        if isinstance(group, dict):
            groups += [group[k] for k in ("display", "value") if isinstance(group.get(k), str)]
    return Identity(name, tuple(groups))


@dataclass(frozen=True, slots=True)
class _Cached:
    expires: float
    identity: Identity | None  # None: the workspace refused the token


class DatabricksIdentity:
    """Whose Databricks token this is, asked of the workspace (SCIM `Me` with the token).

    Answers are kept for `ttl_s`, refusals for `negative_ttl_s`, keyed by an HMAC of the
    token under a secret of this process; concurrent look-ups of one token make one call.
    A 401 or 403 is a refusal; any other failure (down, slow, 5xx) raises
    `IdentityUnavailable` and is not remembered.
    """

    def __init__(
        self,
        host: str,
        *,
        ttl_s: float,
        negative_ttl_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = host.rstrip("/") + SCIM_ME_PATH
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.clock = clock
        self.client = client or httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._secret = os.urandom(SECRET_BYTES)
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._flights: dict[bytes, asyncio.Future[Identity | None]] = {}
        self.lookups = 0

    def _key(self, token: str) -> bytes:
        return hmac.new(self._secret, token.encode("utf-8"), hashlib.sha256).digest()

    async def identify(self, token: str) -> Identity | None:
        key = self._key(token)
        cached = self._cache.get(key)
        if cached is not None and cached.expires > self.clock():
            return cached.identity
        flight = self._flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            identity = await self._ask(token)
        except BaseException as exc:
            flight.set_exception(exc)
            # Retrieved here so an unawaited flight never logs "exception never retrieved".
            flight.exception()
            raise
        else:
            flight.set_result(identity)
            ttl = self.ttl_s if identity is not None else self.negative_ttl_s
            self._cache[key] = _Cached(self.clock() + ttl, identity)
            self._cache.move_to_end(key)
            while len(self._cache) > MAX_CACHED_TOKENS:
                self._cache.popitem(last=False)
            return identity
        finally:
            del self._flights[key]

    async def _ask(self, token: str) -> Identity | None:
        self.lookups += 1
        try:
            reply = await self.client.get(
                self.url, headers={"authorization": f"Bearer {token}", "accept": "application/json"}
            )
        except httpx.HTTPError as exc:
            LOGGER.warning("client_auth: the workspace did not answer (%s)", type(exc).__name__)
            raise IdentityUnavailable() from None
        if reply.status_code in (401, 403):
            return None
        if reply.status_code != 200:
            LOGGER.warning("client_auth: the workspace answered %d to SCIM Me", reply.status_code)
            raise IdentityUnavailable()
        try:
            identity = identity_of_me(reply.json())
        except ValueError:
            identity = None
        if identity is None:
            LOGGER.warning("client_auth: the workspace's SCIM Me answer names no user")
            raise IdentityUnavailable()
        return identity

    async def aclose(self) -> None:
        await self.client.aclose()

    def __repr__(self) -> str:
        return f"DatabricksIdentity({self.url!r}, cached={len(self._cache)})"
