"""`client_auth: tokens`: the client's bearer token against the SHA-256 digests of a file
of `name:sha256hex` lines, re-read when it changes.

A token the file proved is remembered as sent (the `Authorization` value, in this
process's memory only, where every request carries it anyway), so that a client's next
request skips the parsing and the hash: the check is on every scoring request. Only
proven, allowed tokens are remembered (a guess costs a hash and leaves nothing), each in
one spelling only, the set is bounded, and it is forgotten whenever the file is read again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from proxy.clientauth.identity import MAX_CACHED_TOKENS, Identity
from proxy.config import ConfigError

LOGGER = logging.getLogger("serving_proxy")
# A token file is looked at (one stat) at most this often.
RELOAD_CHECK_S = 1.0
SHA256_HEX_CHARS = 64


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
