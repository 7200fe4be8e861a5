"""The selectable upstream client on aiohttp (`server.upstream_client: aiohttp`).

I/O. One `AiohttpUpstream` per backend origin satisfies `base.Upstream`; every aiohttp
exception is mapped through `AIOHTTP_ERRORS` and none escapes. `import aiohttp` below is
absolute, so it reaches the library, not this module.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from yarl import URL

from proxy.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from proxy.models import UpstreamReply
from proxy.upstream.base import ErrorTable, Headers, UpstreamSettings, map_exception

URL_CACHE_SIZE = 512

# Every aiohttp timeout is also a ClientConnectionError and an OSError, so it stands first.
AIOHTTP_ERRORS: ErrorTable = (
    (asyncio.TimeoutError, UpstreamTimeout),
    (aiohttp.ClientPayloadError, UpstreamProtocolError),
    (aiohttp.ClientResponseError, UpstreamProtocolError),
    (aiohttp.ClientConnectionError, UpstreamConnectError),
    (aiohttp.ClientError, UpstreamProtocolError),
)


class AiohttpUpstream:
    """One keep-alive pool per backend origin."""

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
