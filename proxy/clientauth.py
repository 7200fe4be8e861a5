"""Who the client is, proven before the proxy lends it the credentials it injects.

`client_auth: tokens` matches the client's bearer token against SHA-256 digests in a file
(`TokenFile`); `client_auth: databricks` asks the workspace whose token it is
(`DatabricksIdentity`, SCIM `Me` made with the client's own token). Both give an
`Identity`, and `ClientAuth.authenticate` turns every refusal into `ClientUnauthorized`
(401) and every look-up that could not be made into `IdentityUnavailable` (503): an
unproven client is never let through.

A token never leaves this module: no log line, error or `repr` holds it. The workspace
look-ups are cached by an HMAC of the token under a secret of this process. A token the
tokens file proved is remembered as sent (the `Authorization` value, in this process's
memory only, where every request carries it anyway), so that a client's next request
skips the parsing and the hash: the check is on every scoring request. Only proven,
allowed tokens are remembered (a guess costs a hash and leaves nothing), each in one
spelling only, the set is bounded, and it is forgotten whenever the file is read again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx

from proxy.config import ConfigError, ProxyConfig
from proxy.config.identity import AllowConfig, ClientAuthConfig
from proxy.errors import ClientUnauthorized, IdentityUnavailable

LOGGER = logging.getLogger("serving_proxy")
SCIM_ME_PATH = "/api/2.0/preview/scim/v2/Me"
# A token file is looked at (one stat) at most this often.
RELOAD_CHECK_S = 1.0
# Distinct tokens remembered by the databricks look-up, and proven values by a tokens
# file; the oldest go first.
MAX_CACHED_TOKENS = 10_000
SECRET_BYTES = 32
SHA256_HEX_CHARS = 64


@dataclass(frozen=True, slots=True)
class Identity:
    """A proven client: its name (a token file's `name`, a user's or service principal's
    name) and, from the workspace, the groups it belongs to."""

    name: str
    groups: tuple[str, ...] = ()


def authorization(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The value of the first `Authorization` header, as sent."""
    for name, value in headers:
        if name == b"authorization":
            return value
    return None


def bearer_token(value: bytes | None) -> str | None:
    """The token of an `Authorization: Bearer …` value, or None (absent, another scheme,
    empty)."""
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        return token
    return None


def parse_tokens(text: str, source: str) -> dict[bytes, str]:
    """A tokens file's `name:sha256hex` lines → {digest: name}. Blank lines and lines
    starting with `#` are skipped.

    Raises:
        ValueError: naming the file and the line (never the line's text: it may hold a
            token pasted by mistake).
    """
    digests: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hexdigest = line.rpartition(":")
        name, hexdigest = name.strip(), hexdigest.strip().lower()
        if not sep or not name:
            raise ValueError(f"{source} line {number}: expected name:sha256hex")
        if len(hexdigest) != SHA256_HEX_CHARS or any(
            c not in "0123456789abcdef" for c in hexdigest
        ):
            raise ValueError(f"{source} line {number}: the digest is not 64 hex digits")
        digest = bytes.fromhex(hexdigest)
        if digest in digests:
            raise ValueError(f"{source} line {number}: the digest is listed twice")
        digests[digest] = name
    return digests


def match_digest(token: str, digests: dict[bytes, str]) -> str | None:
    """The name whose digest is the token's SHA-256.

    A dict look-up by the digest, not a constant-time scan of every entry: what its timing
    could tell is how the *digest* of a guess compares with the stored ones, and steering
    a digest byte by byte would take preimages of SHA-256. So it tells nothing about
    the tokens, and costs the same for ten entries as for ten thousand.
    """
    return digests.get(hashlib.sha256(token.encode("utf-8")).digest())


def allowed(identity: Identity, allow: AllowConfig) -> bool:
    """Whether `client_auth.allow` lets this proven client in (anyone, when it is empty)."""
    if allow.anyone:
        return True
    return identity.name in allow.users or any(g in allow.groups for g in identity.groups)


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


class TokenFile:
    """`client_auth.tokens_file`, re-read when its modification time or size changes
    (checked at most once a second). A file that fails to read or parse later is logged
    and the last good set stays.

    Raises (at construction):
        ConfigError: the file cannot be read or has a bad line.
    """

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.monotonic,
        max_proven: int = MAX_CACHED_TOKENS,
    ) -> None:
        self.path = path
        self.clock = clock
        self.max_proven = max_proven
        try:
            self._adopt(*self._read())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"client_auth.tokens_file: {_why(exc)}") from None
        self.checked = clock()

    def _read(self) -> tuple[dict[bytes, str], tuple[int, int]]:
        stat = self.path.stat()
        text = self.path.read_text(encoding="utf-8")
        return parse_tokens(text, str(self.path)), (stat.st_mtime_ns, stat.st_size)

    def _adopt(self, digests: dict[bytes, str], stamp: tuple[int, int]) -> None:
        self.digests, self.stamp = digests, stamp
        # One Identity per name, made once per reading: nothing is built per request.
        self._identities = {name: Identity(name) for name in digests.values()}
        # Proven `Authorization` values of this reading (see the module's docstring).
        self.proven: dict[bytes, Identity] = {}

    def current(self) -> dict[bytes, str]:
        self.check()
        return self.digests

    def check(self) -> None:
        """Re-read the file if it changed (looked at once a second at most)."""
        now = self.clock()
        if now - self.checked >= RELOAD_CHECK_S:
            self.checked = now
            self._reload_if_changed()

    def _reload_if_changed(self) -> None:
        try:
            stat = self.path.stat()
            if (stat.st_mtime_ns, stat.st_size) == self.stamp:
                return
            self._adopt(*self._read())
        except (OSError, ValueError) as exc:
            LOGGER.error(
                "client_auth.tokens_file not reloaded, the last good one stays: %s", _why(exc)
            )
            return
        LOGGER.info("client_auth.tokens_file reloaded: %d tokens", len(self.digests))

    def identify(self, token: str) -> Identity | None:
        name = match_digest(token, self.current())
        return None if name is None else self._identities[name]

    def remember(self, value: bytes, identity: Identity) -> None:
        """Remember an `Authorization` value that proved `identity` (and was allowed)."""
        if len(self.proven) >= self.max_proven:
            del self.proven[next(iter(self.proven))]  # the oldest
        self.proven[value] = identity

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, tokens={len(self.digests)})"


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


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
