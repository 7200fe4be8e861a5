"""The upstream seam: what every client sends, returns and raises, and what they share.

Holds the `Upstream` protocol, its settings, the mapping of a client library's exceptions
to `errors.*` (architecture §1.4, §2.4) and Content-Encoding decoding. No I/O here: the
clients (`http1`, the default, and `aiohttp`, still selectable) do it, and no foreign
exception leaves them.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.config.backends import DEFAULT_MAX_REPLY_BYTES
from proxy.errors import ProxyError, UpstreamProtocolError
from proxy.models import Body, UpstreamReply, first_header

Headers = Sequence[tuple[str, str]]
# Ordered: the first matching class wins, so subclasses stand before their bases.
ErrorTable = tuple[tuple[type[BaseException], Callable[[], ProxyError]], ...]
# Decoded output up to this size is inflated on the event loop; a reply that inflates to
# more is decoded again in a worker thread. A thread hop costs more than a small inflate,
# and scoring replies are nearly always small; a large one must not stall other requests.
INLINE_DECODE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """Everything that makes two backends need different connection pools."""

    origin: str
    connect_timeout_s: float
    total_timeout_s: float
    # A hard bound on the connections open to the origin; callers beyond it wait.
    pool_size: int
    # Translated replies are parsed, so they are fetched decoded; pass-through replies
    # keep the upstream's bytes and Content-Encoding untouched (protocols.md §7.3).
    decompress: bool
    # A reply body larger than this, as received or once decoded, is a protocol error.
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES
    # Whether a request already written may be sent again when its connection closes
    # without an answer: the model may have run, so only a backend that says so.
    retry_after_write: bool = False
    # Whether HTTPS_PROXY / HTTP_PROXY / NO_PROXY choose an egress proxy (`egress`).
    trust_env: bool = True


class Upstream(Protocol):
    """Anything that can send a request to one backend origin."""

    async def send(self, method: str, path: str, headers: Headers, body: Body) -> UpstreamReply:
        """Send and read the whole reply, or raise a `ProxyError` (UF, UT, UPE)."""
        ...

    async def aclose(self) -> None: ...


class BodyTooLarge(Exception):
    """A body that would decode to more than the limit it was given."""


def content_coding(headers: Iterable[tuple[str, str]]) -> str | None:
    """A reply's Content-Encoding, trimmed and lower-cased; None when it names none."""
    coding = first_header(headers, "content-encoding")
    return None if coding is None else coding.strip().lower()


def decode_content(coding: str, body: bytes, limit: int = DEFAULT_MAX_REPLY_BYTES) -> bytes | None:
    """`body` without the Content-Encoding `coding`; None for a coding the proxy cannot read.

    Raises:
        zlib.error: the bytes are not in that coding, or end before its stream does.
        BodyTooLarge: they decode to more than `limit` bytes (found without inflating more
            than one byte past it).
    """
    if coding == "identity":
        return body
    if coding in ("gzip", "x-gzip"):
        return _inflate(body, 16 + zlib.MAX_WBITS, limit, members=True)
    if coding == "deflate":
        try:
            return _inflate(body, zlib.MAX_WBITS, limit, members=False)
        except zlib.error:  # raw deflate, without the zlib wrapper, as some servers send it
            return _inflate(body, -zlib.MAX_WBITS, limit, members=False)
    return None


def _inflate(data: bytes, wbits: int, limit: int, *, members: bool) -> bytes:
    # A gzip body may be several members back to back (RFC 1952 §2.2, what `gzip -c a b`
    # writes); each is inflated in turn, as `gzip.decompress` does, zero padding between
    # them skipped. One deflate stream is the whole of a deflate body.
    parts: list[bytes] = []
    size = 0
    while True:
        inflater = zlib.decompressobj(wbits)
        # One byte of room past the limit: output that fills it is over the limit, and
        # zlib stops there instead of inflating the rest.
        part = inflater.decompress(data, limit - size + 1)
        size += len(part)
        if size > limit:
            raise BodyTooLarge(limit)
        parts.append(part)
        if not inflater.eof:
            raise zlib.error("incomplete or truncated stream")
        data = inflater.unused_data.lstrip(b"\x00") if members else b""
        if not data:
            return b"".join(parts)


async def decoded(
    headers: Sequence[tuple[str, str]], body: bytes, limit: int
) -> tuple[list[tuple[str, str]], bytes]:
    """A reply's body without its Content-Encoding, for replies the proxy will parse; a
    large one is inflated off the event loop.

    Raises:
        UpstreamProtocolError: an unknown coding, bytes not in it, or more than `limit`.
    """
    coding = content_coding(headers)
    if coding is None:
        return list(headers), body
    try:
        try:
            out = decode_content(coding, body, min(limit, INLINE_DECODE_BYTES))
        except BodyTooLarge:
            if limit <= INLINE_DECODE_BYTES:
                raise
            out = await asyncio.to_thread(decode_content, coding, body, limit)
    except zlib.error as exc:
        raise UpstreamProtocolError("reply body does not match its Content-Encoding") from exc
    except BodyTooLarge as exc:
        raise UpstreamProtocolError("reply body larger than max_reply_bytes") from exc
    if out is None:
        raise UpstreamProtocolError(f"cannot decode Content-Encoding {coding!r}")
    kept = [(k, v) for k, v in headers if k.lower() not in ("content-encoding", "content-length")]
    return kept, out


def map_exception(exc: BaseException, table: ErrorTable) -> ProxyError | None:
    """The proxy error a client-library exception stands for, or None for a bug."""
    for foreign, ours in table:
        if isinstance(exc, foreign):
            return ours()
    return None
