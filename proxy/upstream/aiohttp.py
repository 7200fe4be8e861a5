"""The selectable upstream client on aiohttp (`server.upstream_client: aiohttp`).

I/O. One `AiohttpUpstream` per backend origin satisfies `base.Upstream`; every aiohttp
exception is mapped through `AIOHTTP_ERRORS` and none escapes. `import aiohttp` below is
absolute, so it reaches the library, not this module.

It keeps the default client's rules where aiohttp leaves a choice: bodies are decoded by
`base.decoded` (the same cap, several gzip members, large inflates off the loop) and read
no further than `max_reply_bytes`; the egress proxy is the one `egress` resolves, given
per request, because aiohttp's own `trust_env` would also read `~/.netrc` and could put
its credentials in place of the Authorization header the proxy sends. aiohttp sends a
POST once; `retry_after_write` allows one more try when the server disconnected without
an answer.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from yarl import URL

from proxy.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from proxy.models import Body, UpstreamReply
from proxy.upstream.base import ErrorTable, Headers, UpstreamSettings, decoded, map_exception
from proxy.upstream.egress import egress_proxy

URL_CACHE_SIZE = 512


def _not_sent() -> UpstreamConnectError:
    """A failure while connecting: nothing of the request was written (safe to retry)."""
    return UpstreamConnectError(sent=False)


# Every aiohttp timeout is also a ClientConnectionError and an OSError, so it stands first;
# a connect timeout (`timeout.connect` spent) before the other timeouts, since nothing
# was written yet.
AIOHTTP_ERRORS: ErrorTable = (
    (aiohttp.ConnectionTimeoutError, _not_sent),
    (asyncio.TimeoutError, UpstreamTimeout),
    # A refusal by the egress proxy (407, 403, 502): the model was never reached.
    (aiohttp.ClientHttpProxyError, _not_sent),
    (aiohttp.ClientPayloadError, UpstreamProtocolError),
    (aiohttp.ClientResponseError, UpstreamProtocolError),
    # Refused, unreachable, DNS, TLS handshake: the connection never opened.
    (aiohttp.ClientConnectorError, _not_sent),
    # Any other (a server that disconnected mid-exchange): it may have read the request.
    (aiohttp.ClientConnectionError, UpstreamConnectError),
    (aiohttp.ClientError, UpstreamProtocolError),
)


class AiohttpUpstream:
    """One keep-alive pool per backend origin."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}
        proxy = egress_proxy(settings.origin) if settings.trust_env else None
        self._proxy = None if proxy is None else URL(proxy.url)
        auth = None if proxy is None else proxy.authorization
        # aiohttp puts proxy_headers on the CONNECT request only; through a forward proxy
        # (an http:// origin) the credentials travel on each request instead.
        tunnelled = settings.origin.startswith("https:")
        self._proxy_headers = {"Proxy-Authorization": auth} if auth and tunnelled else None
        self._extra: tuple[tuple[str, str], ...] = (
            (("Proxy-Authorization", auth),) if auth and not tunnelled else ()
        )

    def __repr__(self) -> str:
        return f"AiohttpUpstream({self.settings.origin!r}, proxy={self._proxy!r})"

    def _open(self) -> aiohttp.ClientSession:
        # Created lazily, inside the running loop: aiohttp binds a session to its loop.
        s = self.settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.pool_size, limit_per_host=s.pool_size),
            # A shared session must never replay one client's cookies to another
            # (GHSA-7vwr-g6pm-9hc8).
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=s.total_timeout_s, connect=s.connect_timeout_s),
            # Decoded by `base.decoded` instead, under the same cap as the default client.
            auto_decompress=False,
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

    async def send(self, method: str, path: str, headers: Headers, body: Body) -> UpstreamReply:
        session = self._session or self._open()
        url = self._url(path)
        t0 = time.perf_counter()
        tries = 2 if self.settings.retry_after_write else 1
        while True:
            tries -= 1
            try:
                status, got, payload = await self._request(session, method, url, headers, body)
            except aiohttp.ServerDisconnectedError as exc:
                if tries:
                    continue  # the backend allows one more try (module docstring)
                raise UpstreamConnectError() from exc
            except Exception as exc:
                mapped = map_exception(exc, AIOHTTP_ERRORS)
                if mapped is None:
                    raise
                raise mapped from exc
            break
        reply_headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = got
        if self.settings.decompress:
            reply_headers, payload = await decoded(got, payload, self.settings.max_reply_bytes)
        return UpstreamReply(status, tuple(reply_headers), payload, time.perf_counter() - t0)

    async def _request(
        self, session: aiohttp.ClientSession, method: str, url: URL, headers: Headers, body: Body
    ) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
        limit = self.settings.max_reply_bytes
        async with session.request(
            method,
            url,
            headers=[*headers, *self._extra],
            data=body or None,
            allow_redirects=False,
            proxy=self._proxy,
            proxy_headers=self._proxy_headers,
        ) as resp:
            if resp.content_length is not None and resp.content_length > limit:
                raise UpstreamProtocolError("reply body larger than max_reply_bytes")
            parts: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise UpstreamProtocolError("reply body larger than max_reply_bytes")
                parts.append(chunk)
            return resp.status, tuple(resp.headers.items()), b"".join(parts)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
