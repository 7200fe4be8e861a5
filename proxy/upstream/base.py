"""The upstream seam: what every client sends, returns and raises, and what they share.

Holds the `Upstream` protocol, its settings, the mapping of a client library's exceptions
to `errors.*` (architecture §1.4, §2.4) and Content-Encoding decoding. No I/O here: the
clients (`http1`, the default, and `aiohttp`, still selectable) do it, and no foreign
exception leaves them.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.errors import ProxyError
from proxy.models import UpstreamReply, first_header

Headers = Sequence[tuple[str, str]]
# Ordered: the first matching class wins, so subclasses stand before their bases.
ErrorTable = tuple[tuple[type[BaseException], Callable[[], ProxyError]], ...]


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """Everything that makes two backends need different connection pools."""

    origin: str
    connect_timeout_s: float
    total_timeout_s: float
    pool_size: int
    # Translated replies are parsed, so they are fetched decoded; pass-through replies
    # keep the upstream's bytes and Content-Encoding untouched (protocols.md §7.3).
    decompress: bool


class Upstream(Protocol):
    """Anything that can send a request to one backend origin."""

    async def send(self, method: str, path: str, headers: Headers, body: bytes) -> UpstreamReply:
        """Send and read the whole reply, or raise a `ProxyError` (UF, UT, UPE)."""
        ...

    async def aclose(self) -> None: ...


def content_coding(headers: Iterable[tuple[str, str]]) -> str | None:
    """A reply's Content-Encoding, trimmed and lower-cased; None when it names none."""
    coding = first_header(headers, "content-encoding")
    return None if coding is None else coding.strip().lower()


def decode_content(coding: str, body: bytes) -> bytes | None:
    """`body` without the Content-Encoding `coding`; None for a coding the proxy cannot read.

    Raises:
        zlib.error: the bytes are not in that coding.
    """
    if coding == "identity":
        return body
    if coding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if coding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:  # raw deflate, without the zlib wrapper, as some servers send it
            return zlib.decompress(body, -zlib.MAX_WBITS)
    return None


def map_exception(exc: BaseException, table: ErrorTable) -> ProxyError | None:
    """The proxy error a client-library exception stands for, or None for a bug."""
    for foreign, ours in table:
        if isinstance(exc, foreign):
            return ours()
    return None
