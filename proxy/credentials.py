"""The credentials the proxy injects towards a backend (protocols.md §7.1 `inject`, §7.2).

A `TokenSource` is the seam: the request path asks it for a bearer token per call and
never learns where the token came from. Two sources:

- `StaticToken`: a token fixed for the process's life, read from the environment at
  start-up (`auth: {token_env: NAME}`, or its shorthand `token_env: NAME`);
- `RefreshingToken` over `DatabricksFetch`: `auth: databricks`, credentials resolved by the
  Databricks SDK with the backend's URL as the host, so they resolve as every Databricks
  tool resolves them (OAuth M2M from `DATABRICKS_CLIENT_ID` + `DATABRICKS_CLIENT_SECRET`,
  `DATABRICKS_TOKEN`, `DATABRICKS_CONFIG_PROFILE`, Azure service principals).

A refreshing source keeps the token it has and asks for a new one ahead of its expiry,
in a thread (the SDK blocks on HTTP), one refresh at a time however many requests see
the token age together. After the endpoint answers 401 to a token, `renew` gets another
one (once for all the requests that saw that token rejected).

No token ever reaches a log line or an error body, nor a `repr`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from proxy.config import ProxyConfig
from proxy.config.backends import DATABRICKS, BackendConfig, BackendOverride, TokenAuth
from proxy.errors import UpstreamConnectError

log = logging.getLogger("proxy.credentials")

# Ask for a new token this long before the one held expires (a quarter of its lifetime
# when that is shorter). It is under the SDK's own margin (it calls a token expired 40 s
# before its expiry), so the SDK fetches a new one rather than hand back its cached copy.
REFRESH_LEAD_S = 30.0
# Stop sending a token this long before its expiry (a tenth of its lifetime when that is
# shorter): a token that expires on its way is answered 401.
USE_MARGIN_S = 5.0
# Credentials whose expiry the SDK does not tell (a PAT, an Azure service principal's
# token) are asked for again this often, in the background; the SDK answers from its own
# cache and refreshes what it knows to be expiring, and a token it hands out has at least
# its 40 s margin left, so none is sent past its expiry.
UNKNOWN_EXPIRY_RECHECK_S = 30.0
# After a failed refresh, no other is started for this long: a token endpoint that is
# down gets one attempt a second, not one per request.
FAILED_REFRESH_PAUSE_S = 1.0
# A request waits this long at most for a token; the SDK's token request has no timeout
# of its own, so a fetch still running after `FETCH_ABANDON_S` is given up for a new one.
FETCH_WAIT_S = 10.0
FETCH_ABANDON_S = 30.0
# How much of the SDK's message a failed refresh logs.
MAX_LOGGED_ERROR_CHARS = 300

CREDENTIALS_UNAVAILABLE = "Cannot obtain credentials for the model endpoint."


class TokenSource(Protocol):
    """Gives the bearer token to send with the next call."""

    async def token(self) -> str:
        """The token to send now."""
        ...

    async def renew(self, rejected: str) -> str | None:
        """After the endpoint answered 401 to `rejected`: another token, or None when no
        other can be had (the 401 then stands)."""
        ...


@dataclass(frozen=True, slots=True)
class StaticToken:
    """A token fixed for the process's life (a personal access token in an env var)."""

    value: str

    async def token(self) -> str:
        return self.value

    async def renew(self, rejected: str) -> str | None:
        # The same token again would be rejected again.
        return None

    def __repr__(self) -> str:
        return "StaticToken('***')"


@dataclass(frozen=True, slots=True)
class Lease:
    """A token held, on the clock of `RefreshingToken` (monotonic seconds).

    Attributes:
        refresh_at: from then on a refresh is started in the background.
        expires_at: from then on the token is not sent; callers wait for a new one.
    """

    value: str = field(repr=False)
    refresh_at: float
    expires_at: float


def lease_of(value: str, lifetime_s: float | None, now: float) -> Lease:
    """When to refresh `value`, got at `now`, valid for `lifetime_s` (None: not told)."""
    if lifetime_s is None:
        return Lease(value, now + UNKNOWN_EXPIRY_RECHECK_S, math.inf)
    lifetime_s = max(lifetime_s, 0.0)
    lead = min(REFRESH_LEAD_S, lifetime_s / 4)
    margin = min(USE_MARGIN_S, lifetime_s / 10)
    return Lease(value, now + lifetime_s - lead, now + lifetime_s - margin)


# Given the token held (or None) and whether the SDK's cached copy must be bypassed (after
# a 401): a token and its lifetime in seconds (None: not told). Blocking; run in a thread.
Fetch = Callable[[str | None, bool], tuple[str, float | None]]


class RefreshingToken:
    """A token that is fetched when first needed, refreshed ahead of its expiry, and
    renewed after a 401, with one fetch in flight at a time.

    Args:
        fetch: gets a token (blocking; called in a thread).
        name: what the log says the token is for (the backend's host).
        clock: monotonic seconds.
    """

    def __init__(
        self, fetch: Fetch, *, name: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self.name = name
        self._clock = clock
        self._lease: Lease | None = None
        self._inflight: asyncio.Task[Lease] | None = None
        self._started_at = -math.inf
        self._paused_until = -math.inf
        # Fetches asked of `fetch`, for tests; `on_fetch` is told of each when it ends
        # (the name, and whether it gave a token): the metrics count them.
        self.fetches = 0
        self.on_fetch: list[Callable[[str, bool], None]] = []

    def __repr__(self) -> str:
        return f"RefreshingToken({self.name!r})"

    async def token(self) -> str:
        lease = self._lease
        now = self._clock()
        if lease is not None:
            if now < lease.refresh_at:
                return lease.value
            if now < lease.expires_at:
                # Ahead of expiry: refresh in the background, keep sending this one.
                if self._current() is None and now >= self._paused_until:
                    self._start(lease.value, force=False)
                return lease.value
        return (await self._refreshed(force=False)).value

    async def renew(self, rejected: str) -> str | None:
        lease = self._lease
        if lease is not None and lease.value != rejected:
            # Renewed already, by a request that saw the same 401 first.
            return lease.value
        task = self._current()
        if task is not None:
            lease = await _wait(task)
            if lease.value != rejected:
                return lease.value
        lease = await self._refreshed(force=True)
        return None if lease.value == rejected else lease.value

    async def _refreshed(self, *, force: bool) -> Lease:
        """The lease of the refresh in flight, or of a new one."""
        task = self._current()
        if task is None:
            if self._clock() < self._paused_until:
                raise UpstreamConnectError(CREDENTIALS_UNAVAILABLE, sent=False)
            held = None if self._lease is None else self._lease.value
            task = self._start(held, force=force)
        return await _wait(task)

    def _current(self) -> asyncio.Task[Lease] | None:
        task = self._inflight
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            return None
        if self._clock() - self._started_at > FETCH_ABANDON_S:
            return None
        return task

    def _start(self, held: str | None, *, force: bool) -> asyncio.Task[Lease]:
        self.fetches += 1
        self._started_at = self._clock()
        task = asyncio.get_running_loop().create_task(self._run(held, force))
        # A background refresh nobody awaits must not report its failure a second time.
        task.add_done_callback(_retrieve)
        self._inflight = task
        return task

    async def _run(self, held: str | None, force: bool) -> Lease:
        try:
            value, lifetime_s = await asyncio.to_thread(self._fetch, held, force)
        except Exception as exc:  # anything the SDK raises: the request gets a 503
            self._paused_until = self._clock() + FAILED_REFRESH_PAUSE_S
            log.warning(
                "credentials for %s: no token (%s: %s)",
                self.name,
                type(exc).__name__,
                str(exc)[:MAX_LOGGED_ERROR_CHARS],
            )
            self._told(ok=False)
            raise UpstreamConnectError(CREDENTIALS_UNAVAILABLE, sent=False) from None
        lease = lease_of(value, lifetime_s, self._clock())
        self._lease = lease
        self._told(ok=True)
        return lease

    def _told(self, *, ok: bool) -> None:
        for listener in self.on_fetch:
            listener(self.name, ok)


async def _wait(task: asyncio.Task[Lease]) -> Lease:
    """The fetch's lease, within `FETCH_WAIT_S`; a caller that goes away or stops
    waiting does not cancel the fetch the others wait for."""
    try:
        return await asyncio.wait_for(asyncio.shield(task), FETCH_WAIT_S)
    except TimeoutError:
        raise UpstreamConnectError(CREDENTIALS_UNAVAILABLE, sent=False) from None


def _retrieve(task: asyncio.Task[Lease]) -> None:
    if not task.cancelled():
        task.exception()


class DatabricksFetch:
    """Tokens from the Databricks SDK's unified auth, for one workspace host.

    The SDK resolves the credentials (environment, `~/.databrickscfg` profile, Azure) when
    first asked, not at start-up: a workspace that is briefly unreachable then does not
    stop the proxy from starting. Only the Authorization header is used, as a bearer token.
    """

    def __init__(self, host: str, factory: Callable[[str], Any] | None = None) -> None:
        self.host = host
        self._factory = factory or _sdk_config
        self._config: Any = None

    def __repr__(self) -> str:
        return f"DatabricksFetch({self.host!r})"

    def __call__(self, held: str | None, force: bool) -> tuple[str, float | None]:
        if self._config is None or force:
            # A new SDK config has no cached token: after a 401 the cached one is no good.
            self._config = self._factory(self.host)
            return _bearer_of(self._config)
        value, lifetime_s = _bearer_of(self._config)
        if value == held and lifetime_s is not None:
            # The SDK still holds the token as fresh by its own margin: go around its cache.
            self._config = self._factory(self.host)
            value, lifetime_s = _bearer_of(self._config)
        return value, lifetime_s


def _sdk_config(host: str) -> Any:
    # Imported when first used: only `auth: databricks` needs the SDK, and it is large.
    from databricks.sdk.core import Config

    return Config(host=host)


def _bearer_of(config: Any) -> tuple[str, float | None]:
    """The SDK's bearer token and, for OAuth credentials, its remaining lifetime."""
    try:
        oauth = config.oauth_token()
    except ValueError:
        # Not OAuth (a PAT, Azure): the SDK gives headers without an expiry.
        scheme, _, value = config.authenticate().get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise ValueError(
                f"the SDK's {config.auth_type!r} credentials give no bearer token"
            ) from None
        return value, None
    if (oauth.token_type or "Bearer").lower() != "bearer" or not oauth.access_token:
        raise ValueError("the SDK's OAuth token is not a bearer token")
    if oauth.expiry is None:
        return oauth.access_token, None
    expiry: datetime = oauth.expiry
    return oauth.access_token, (expiry - datetime.now(expiry.tzinfo)).total_seconds()


Sources = Mapping[str, TokenSource | None]


@dataclass(frozen=True, slots=True)
class Credentials:
    """Per configured model and backend: the token source, or None to pass the client's
    own Authorization through (§7.1 `passthrough`; §7.2 for legacy).

    A legacy backend (or a model's legacy override) with `auth` gets its token injected
    like serverless `inject`: the token is what the legacy workspace accepts, and the
    client's own credential then never leaves the proxy.
    """

    serverless: Sources
    legacy: Sources = field(default_factory=dict)

    def refreshing(self) -> list[RefreshingToken]:
        """Each token that is fetched and refreshed, once (models of one host share one)."""
        found: dict[int, RefreshingToken] = {}
        for sources in (self.serverless, self.legacy):
            for source in sources.values():
                if isinstance(source, RefreshingToken):
                    found.setdefault(id(source), source)
        return list(found.values())


def build_credentials(
    config: ProxyConfig, fetch_factory: Callable[[str], Fetch] = DatabricksFetch
) -> Credentials:
    """Each model's token sources for both backends, from the secrets read at start-up;
    the models whose backend has one host and `auth: databricks` share one token."""
    serverless = config.backends.serverless
    assert serverless is not None  # ProxyConfig's validator requires it
    legacy = config.backends.legacy
    by_host: dict[str, RefreshingToken] = {}

    def source(base: BackendConfig, override: BackendOverride | None) -> TokenSource | None:
        auth = override.auth if override is not None and override.auth is not None else base.auth
        if auth is None:
            return None
        if isinstance(auth, TokenAuth):
            return StaticToken(config.secrets[auth.token_env].get_secret_value())
        assert auth == DATABRICKS
        host = override.url if override is not None and override.url else base.url
        if host not in by_host:
            by_host[host] = RefreshingToken(fetch_factory(host), name=host)
        return by_host[host]

    return Credentials(
        serverless={
            name: source(serverless, model.serverless) for name, model in config.models.items()
        },
        legacy={
            name: source(legacy, model.legacy)
            for name, model in config.models.items()
            if legacy is not None
        },
    )
