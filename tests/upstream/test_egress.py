"""Egress proxies from HTTPS_PROXY / HTTP_PROXY / NO_PROXY, for both upstream clients,
through a small forward and CONNECT proxy written here, on loopback."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from proxy.errors import UpstreamConnectError
from proxy.upstream.aiohttp import AiohttpUpstream
from proxy.upstream.base import Upstream, UpstreamSettings
from proxy.upstream.egress import egress_proxy, parse_proxy_url
from proxy.upstream.http1 import HttptoolsUpstream
from tests.upstream.test_http1 import OK, always, scripted

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

BOTH = pytest.mark.parametrize(
    "factory", [HttptoolsUpstream, AiohttpUpstream], ids=["httptools", "aiohttp"]
)
SECRET = "s3cr3t-pw"
VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "request_method")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@dataclass
class Seen:
    """What the egress proxy was asked: each request line and Proxy-Authorization."""

    lines: list[bytes] = field(default_factory=list)
    auth: list[bytes | None] = field(default_factory=list)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@asynccontextmanager
async def egress(*, refuse: int = 0) -> AsyncIterator[tuple[int, Seen]]:
    """A forward proxy: CONNECT opens a tunnel; an absolute-form request is sent on in
    origin form, the connection then piped both ways. `refuse` answers CONNECT with it."""
    seen = Seen()
    tasks: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        line, *rest = head.split(b"\r\n")
        auth = next((h.split(b":", 1)[1].strip() for h in rest if h.lower().startswith(
            b"proxy-authorization:")), None)  # fmt: skip
        seen.lines.append(line)
        seen.auth.append(auth)
        method, target, _ = line.split(b" ")
        if method == b"CONNECT":
            if refuse:
                writer.write(b"HTTP/1.1 %d No\r\ncontent-length: 0\r\n\r\n" % refuse)
                writer.close()
                return
            host, port = target.rsplit(b":", 1)
            up_reader, up_writer = await asyncio.open_connection(host.decode(), int(port))
            writers.append(up_writer)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            assert target.startswith(b"http://")
            authority, _, path = target[len(b"http://") :].partition(b"/")
            host, port = authority.rsplit(b":", 1)
            up_reader, up_writer = await asyncio.open_connection(host.decode(), int(port))
            writers.append(up_writer)
            kept = [h for h in rest if not h.lower().startswith(b"proxy-authorization:")]
            up_writer.write(b"\r\n".join([b"%s /%s HTTP/1.1" % (method, path), *kept]))
        for pair in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(_pipe(*pair))
            tasks.add(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        for each in writers:
            each.close()
            with suppress(Exception):
                await each.wait_closed()


def settings(origin: str, *, trust_env: bool = True) -> UpstreamSettings:
    return UpstreamSettings(origin, 1.0, 5.0, 4, True, 1 << 20, False, trust_env)


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@BOTH
async def test_http_origins_go_through_http_proxy_in_absolute_form(
    monkeypatch: pytest.MonkeyPatch,
    factory: Callable[[UpstreamSettings], Upstream],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with scripted(always(OK)) as (url, script), egress() as (port, seen):
        monkeypatch.setenv("HTTP_PROXY", f"http://user:{SECRET}@127.0.0.1:{port}")
        upstream = factory(settings(url))
        try:
            for _ in range(2):
                reply = await upstream.send("POST", "/invocations", [("x-a", "1")], b"{}")
                assert (reply.status, reply.body) == (200, b"[]")
            text = repr(upstream)
        finally:
            await upstream.aclose()
    assert seen.lines[0] == f"POST {url}/invocations HTTP/1.1".encode()
    assert seen.auth[0] == basic("user", SECRET)
    assert script.requests[0].head.startswith(b"POST /invocations HTTP/1.1\r\n")
    assert b"x-a: 1" in script.requests[0].head.lower()
    assert SECRET not in text
    assert SECRET not in caplog.text


@BOTH
async def test_no_proxy_and_trust_env_false_connect_directly(
    monkeypatch: pytest.MonkeyPatch, factory: Callable[[UpstreamSettings], Upstream]
) -> None:
    async with scripted(always(OK)) as (url, script), egress() as (port, seen):
        monkeypatch.setenv("http_proxy", f"127.0.0.1:{port}")
        for chosen, env in ((settings(url, trust_env=False), None), (settings(url), "127.0.0.1")):
            if env is not None:
                monkeypatch.setenv("NO_PROXY", env)
            upstream = factory(chosen)
            try:
                assert (await upstream.send("POST", "/invocations", [], b"{}")).status == 200
            finally:
                await upstream.aclose()
    assert seen.lines == []
    assert len(script.requests) == 2


@BOTH
async def test_https_origins_are_tunnelled_with_connect(
    monkeypatch: pytest.MonkeyPatch, factory: Callable[[UpstreamSettings], Upstream]
) -> None:
    """CONNECT is asked for with the credentials and the tunnel reaches the origin; this
    origin answers the TLS hello with plain text, so the handshake fails (the TLS case is
    the next test's)."""

    async def not_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        writer.close()
        with suppress(Exception):
            await writer.wait_closed()

    origin_server = await asyncio.start_server(not_tls, "127.0.0.1", 0)
    origin = f"https://127.0.0.1:{origin_server.sockets[0].getsockname()[1]}"
    async with egress() as (port, seen):
        monkeypatch.setenv("HTTPS_PROXY", f"http://user:{SECRET}@127.0.0.1:{port}")
        upstream = factory(settings(origin))
        try:
            with pytest.raises(UpstreamConnectError) as caught:
                await upstream.send("POST", "/invocations", [], b"{}")
        finally:
            await upstream.aclose()
            origin_server.close()
            await origin_server.wait_closed()
    assert seen.lines == [f"CONNECT {origin.removeprefix('https://')} HTTP/1.1".encode()]
    assert seen.auth == [basic("user", SECRET)]
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.__cause__)


@BOTH
async def test_a_refused_tunnel_is_a_connect_error(
    monkeypatch: pytest.MonkeyPatch, factory: Callable[[UpstreamSettings], Upstream]
) -> None:
    async with egress(refuse=407) as (port, seen):
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        upstream = factory(settings("https://127.0.0.1:9"))
        try:
            with pytest.raises(UpstreamConnectError):
                await upstream.send("POST", "/invocations", [], b"{}")
        finally:
            await upstream.aclose()
    assert seen.lines == [b"CONNECT 127.0.0.1:9 HTTP/1.1"]


async def test_tls_runs_end_to_end_through_the_tunnel(
    monkeypatch: pytest.MonkeyPatch, self_signed: tuple[Path, Path]
) -> None:
    """The default client: CONNECT, then TLS with the origin (its certificate verified)
    inside the tunnel, keep-alive across requests."""
    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    async with (
        scripted(always(OK), ssl_context=context) as (url, script),
        egress() as (port, seen),
    ):
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
        upstream = HttptoolsUpstream(settings(url))
        try:
            for _ in range(2):
                reply = await upstream.send("POST", "/invocations", [], b"{}")
                assert (reply.status, reply.body) == (200, b"[]")
        finally:
            await upstream.aclose()
    assert len(seen.lines) == 1
    assert seen.lines[0].startswith(b"CONNECT 127.0.0.1:")
    assert [r.connection for r in script.requests] == [1, 1]


# --- resolution ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "origin", "expected"),
    [
        ({}, "https://x.example", None),
        ({"HTTPS_PROXY": "http://p:3128"}, "https://x.example", ("p", 3128)),
        ({"HTTPS_PROXY": "http://p:3128"}, "http://x.example", None),
        ({"HTTP_PROXY": "p:8080"}, "http://x.example", ("p", 8080)),
        ({"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:2"}, "https://x", ("low", 1)),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "example.com"}, "https://x.example.com", None),
        ({"HTTPS_PROXY": "http://p", "no_proxy": ".example.com"}, "https://x.example.com", None),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "*"}, "https://anything", None),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "x.example:8443"}, "https://x.example:8443", None),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "other.example"}, "https://x.example", ("p", 80)),
        # httpoxy: a CGI request can set HTTP_PROXY through a `Proxy:` header.
        ({"HTTP_PROXY": "http://p", "REQUEST_METHOD": "GET"}, "http://x.example", None),
    ],
)  # fmt: skip
def test_resolution_follows_the_standard_library(
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    origin: str,
    expected: tuple[str, int] | None,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    found = egress_proxy(origin)
    assert (None if found is None else (found.host, found.port)) == expected


def test_proxy_credentials_never_show() -> None:
    proxy = parse_proxy_url(f"http://us%40er:{SECRET}@proxy.internal:3128")
    assert proxy.username == "us@er"
    assert proxy.authorization == basic("us@er", SECRET).decode()
    assert SECRET not in repr(proxy)
    assert SECRET not in proxy.url
    with pytest.raises(ValueError, match="only http://") as caught:
        parse_proxy_url(f"socks5://user:{SECRET}@proxy.internal:1080")
    assert SECRET not in str(caught.value)
