"""The upstream seam: send one buffered request to a backend and return its reply.

I/O lives here and nowhere else on the hot path. Foreign exceptions never escape: one
table per client library maps them to `errors.*` (architecture §1.4, §2.4).

aiohttp is the hot-path client: measured on these machines, a proxy forwarding through
httpx 0.28 reached a fraction of the aiohttp figure (encode/httpx#3215: its pool rescans
every connection per request). `HttpxUpstream` satisfies the same `Upstream` protocol so
`benchmarks/overhead.py` can keep measuring the choice.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import httpx
from yarl import URL

from proxy.errors import (
    ProxyError,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from proxy.models import UpstreamReply, first_header

Headers = Sequence[tuple[str, str]]
URL_CACHE_SIZE = 512
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


# Ordered: the first matching class wins, so subclasses stand before their bases
# (every aiohttp timeout is also a ClientConnectionError and an OSError).
AIOHTTP_ERRORS: ErrorTable = (
    (asyncio.TimeoutError, UpstreamTimeout),
    (aiohttp.ClientPayloadError, UpstreamProtocolError),
    (aiohttp.ClientResponseError, UpstreamProtocolError),
    (aiohttp.ClientConnectionError, UpstreamConnectError),
    (aiohttp.ClientError, UpstreamProtocolError),
)

HTTPX_ERRORS: ErrorTable = (
    (httpx.TimeoutException, UpstreamTimeout),
    (httpx.RemoteProtocolError, UpstreamProtocolError),
    (httpx.DecodingError, UpstreamProtocolError),
    (httpx.NetworkError, UpstreamConnectError),
    (httpx.HTTPError, UpstreamProtocolError),
)


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


class AiohttpUpstream:
    """One keep-alive pool per backend origin (architecture §1.2 `upstream.py`)."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    def _open(self) -> aiohttp.ClientSession:
        # Created lazily, inside the running loop: aiohttp binds a session to its loop.
        s = self.settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.pool_size, limit_per_host=s.pool_size),
            # A shared session must never replay one client's cookies to another
            # (GHSA-7vwr-g6pm-9hc8).
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=s.total_timeout_s, connect=s.connect_timeout_s),
            auto_decompress=s.decompress,
            # The client's headers are forwarded as filtered; aiohttp must not add its own
            # Content-Type, User-Agent or Accept-Encoding in their place.
            skip_auto_headers=("Content-Type", "User-Agent", "Accept-Encoding"),
        )
        return self._session

    def _url(self, path: str) -> URL:
        # Paths are already percent-encoded (the client's raw path, or a rendered template):
        # `encoded=True` keeps them byte for byte. Parsing once per distinct path is cheaper
        # than yarl's parse on every request; the bound keeps client-chosen query strings
        # from growing the cache without limit.
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= URL_CACHE_SIZE:
                self._urls.clear()
            url = self._urls[path] = URL(self.settings.origin + path, encoded=True)
        return url

    async def send(self, method: str, path: str, headers: Headers, body: bytes) -> UpstreamReply:
        session = self._session or self._open()
        url = self._url(path)
        t0 = time.perf_counter()
        try:
            async with session.request(
                method, url, headers=list(headers), data=body or None, allow_redirects=False
            ) as resp:
                payload = await resp.read()
                reply_headers = tuple(resp.headers.items())
        except Exception as exc:
            mapped = map_exception(exc, AIOHTTP_ERRORS)
            if mapped is None:
                raise
            raise mapped from exc
        return UpstreamReply(resp.status, reply_headers, payload, time.perf_counter() - t0)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpxUpstream:
    """The same seam over httpx, kept so the benchmark can compare the two clients."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.total_timeout_s, connect=settings.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=settings.pool_size, max_keepalive_connections=settings.pool_size
            ),
            follow_redirects=False,
        )

    async def send(self, method: str, path: str, headers: Headers, body: bytes) -> UpstreamReply:
        t0 = time.perf_counter()
        try:
            resp = await self._client.request(
                method, self.settings.origin + path, headers=list(headers), content=body
            )
        except Exception as exc:
            mapped = map_exception(exc, HTTPX_ERRORS)
            if mapped is None:
                raise
            raise mapped from exc
        # httpx always decodes Content-Encoding: fine for the benchmark's translated path,
        # which is the only place this class serves.
        headers_out = tuple(
            (k, v) for k, v in resp.headers.multi_items() if k.lower() != "content-encoding"
        )
        return UpstreamReply(resp.status_code, headers_out, resp.content, time.perf_counter() - t0)

    async def aclose(self) -> None:
        await self._client.aclose()
