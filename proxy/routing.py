"""Where one request goes: the sticky, weighted split between legacy and serverless. Pure.

No I/O, no clock and no global random state: a request without a client key is split by a
`random.Random` the caller passes in (seeded in tests).

Stickiness comes from a stable hash: `blake2b(client key)` gives a bucket in 0..9999, and a
client goes to serverless iff its bucket is under `serverless_percent * 100`. Python's
`hash()` is salted per process, so workers, replicas and restarts would disagree; blake2b
does not. Because the threshold only grows with the weight, raising a weight only ever
moves clients from legacy to serverless, never back.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal, NamedTuple

from proxy.config.cutover import ClientKeyConfig
from proxy.errors import UnknownModel
from proxy.models import Backend, ModelRef

BUCKETS = 10_000
BUCKET_CACHE_SIZE = 65_536
# Hex characters of a client label: 48 bits, unique among any realistic set of clients.
LABEL_CHARS = 12
# Lets a client the config names pick its backend for one request.
ROUTE_HEADER = "x-serving-proxy-route"
KeySource = Literal["identity", "header", "authorization", "address"]
Reason = Literal["weight", "no-key", "override", "only-serverless"]


@dataclass(frozen=True, slots=True)
class Weights:
    """One model's split. `has_legacy` False: there is nowhere else to send anything."""

    serverless_percent: float
    shadow_percent: float = 0.0
    has_legacy: bool = True
    # Buckets under this go to serverless; computed once per table, not per request.
    cutoff: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cutoff", threshold(self.serverless_percent))


RoutingTable = Mapping[str, Weights]


@dataclass(frozen=True, slots=True)
class ClientKey:
    """What identifies a client. For `authorization` the value is a digest, never the token.

    `value` picks the client's bucket and may come from a header the client chose. The
    `identity` is what the client cannot choose, and the only thing a route override is
    matched against (`override_of`): the identity `client_auth` proved, or else its
    address after trusted-proxy handling.
    """

    source: KeySource
    value: str
    identity: str | None = None


class Decision(NamedTuple):
    """The backend that answers the client, and the one (if any) that is shadowed.

    `bucket` is None when the request had no key and was split by a draw. A NamedTuple,
    not a frozen dataclass: equally immutable, and built on every request, where a frozen
    dataclass's `__init__` was half of the decision's cost.
    """

    primary: Backend
    shadow: Backend | None
    bucket: int | None
    reason: Reason


# Enum attribute look-ups cost more than the arithmetic of a decision: bind them once.
_LEGACY = Backend.LEGACY
_SERVERLESS = Backend.SERVERLESS


def other(backend: Backend) -> Backend:
    return _LEGACY if backend is _SERVERLESS else _SERVERLESS


# Clients repeat: a bounded cache turns the hash into a dict look-up on the hot path.
@lru_cache(maxsize=BUCKET_CACHE_SIZE)
def bucket_of(key: str) -> int:
    """The stable bucket (0..9999) of a client key: the same in every process, forever."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def threshold(percent: float) -> int:
    """Buckets under this number go to serverless: 0 for 0%, 10000 for 100%."""
    return round(percent * (BUCKETS // 100))


def client_key(
    headers: Iterable[tuple[bytes, bytes]],
    client_host: str | None,
    config: ClientKeyConfig,
    proven: str | None = None,
) -> ClientKey | None:
    """The request's client key, from the first source the config enables that is present.

    Read once per request, by the request-context middleware: the routing decision and
    the reports both use what it returns.

    Args:
        headers: the ASGI scope's raw headers (names lower-case, as ASGI gives them).
        client_host: `scope["client"]` host; uvicorn has already replaced it with the
            forwarded address when (and only when) the peer is a trusted proxy.
        config: which sources to try, in the fixed order identity, header, authorization,
            address.
        proven: the identity `client_auth` proved, if any: it replaces the address as the
            key's `identity`, and is the key itself under `client_key.identity`.
    """
    identity = proven or client_host or None
    if config.identity and proven:
        return ClientKey("identity", proven, proven)
    if config.header is not None or config.authorization:
        wanted = None if config.header is None else config.header.encode("latin-1")
        for name, value in headers:
            if name == wanted and value.strip():
                return ClientKey("header", value.strip().decode("latin-1"), identity)
        if config.authorization:
            for name, value in headers:
                if name == b"authorization" and value.strip():
                    # Keep a digest only: the key may be logged or listed in the config.
                    token = value.strip().decode("latin-1").encode("utf-8")
                    digest = hashlib.blake2b(token, digest_size=16).hexdigest()
                    return ClientKey("authorization", digest, identity)
    if config.address and client_host:
        return ClientKey("address", client_host, identity)
    return None


def hash_client_key(value: str, secret: bytes) -> str:
    """A short keyed digest of a client key (HMAC-SHA256, 48 bits shown).

    Keyed, because the keys are mostly IPv4 addresses: 2^32 candidates, so an unkeyed
    hash of one is reversed by trying them all. With the per-deployment secret (never in
    a report) the label is the same in every worker, replica and restart, and says
    nothing to whoever lacks the secret.
    """
    return hmac.new(secret, value.encode("utf-8"), hashlib.sha256).hexdigest()[:LABEL_CHARS]


# The same few clients call again and again: a key is hashed once (bounded). An
# authorization key is already a digest, never the token itself.
_hash_remembered = lru_cache(maxsize=4096)(hash_client_key)


def report_label(key: ClientKey, secret: bytes, *, show_header: bool = False) -> str:
    """How reports, metrics and the access log name a client: a keyed hash, but for a
    header value the config allows to be shown. An identity `client_auth` proved is hashed
    too (a label, like any key); the inventory and the access log carry its name beside
    the label (`ExchangeRecord.identity`)."""
    if key.source == "header" and show_header:
        return key.value
    return _hash_remembered(key.value, secret)


def override_of(
    headers: Sequence[tuple[str, str]], key: ClientKey | None, allowed: Collection[str]
) -> Backend | None:
    """The backend `X-Serving-Proxy-Route` asks for, if this client may ask.

    Only a client whose `identity` the config lists may override: never a key read from
    a header (`client_key.header`, Authorization), which any client can set to a listed
    value. For anyone else, and for a value that names no backend, the header means
    nothing.
    """
    if key is None or key.identity is None or key.identity not in allowed:
        return None
    for name, value in headers:
        if name == ROUTE_HEADER:
            try:
                return Backend(value.strip().lower())
            except ValueError:
                return None
    return None


def decide(
    table: RoutingTable,
    ref: ModelRef,
    key: ClientKey | None,
    rng: random.Random,
    override: Backend | None = None,
) -> Decision:
    """Choose the primary backend and whether to shadow this request.

    Raises:
        UnknownModel: the table has no entry for the model.
    """
    weights = table.get(ref.name)
    if weights is None:
        raise UnknownModel(ref.name, ref.requested)
    if not weights.has_legacy:
        return Decision(_SERVERLESS, None, None, "only-serverless")
    bucket = None if key is None else bucket_of(key.value)
    primary: Backend
    reason: Reason
    if override is not None:
        primary, reason = override, "override"
    elif bucket is not None:
        primary, reason = (_SERVERLESS if bucket < weights.cutoff else _LEGACY), "weight"
    else:
        serverless = rng.random() * 100 < weights.serverless_percent
        primary, reason = (_SERVERLESS if serverless else _LEGACY), "no-key"
    # Drawn per request, not per client, so parity covers every client in time.
    shadowed = weights.shadow_percent > 0 and rng.random() * 100 < weights.shadow_percent
    return Decision(primary, other(primary) if shadowed else None, bucket, reason)
