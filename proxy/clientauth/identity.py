"""A proven client (`Identity`) and what both ways of proving one read from a request:
the `Authorization` header, its bearer token, and whether `client_auth.allow` lets the
client in."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from proxy.config.identity import AllowConfig

# Distinct tokens remembered by the workspace look-up, and proven values by a tokens
# file; the oldest go first.
MAX_CACHED_TOKENS = 10_000


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


def allowed(identity: Identity, allow: AllowConfig) -> bool:
    """Whether `client_auth.allow` lets this proven client in (anyone, when it is empty)."""
    if allow.anyone:
        return True
    return identity.name in allow.users or any(g in allow.groups for g in identity.groups)
