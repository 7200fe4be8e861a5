"""Header rules of protocols.md §7, as tables; forwarding, tokens and cookies also through
the whole proxy on real loopback sockets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import headers
from proxy.app import create_app
from proxy.config import parse_config
from proxy.headers import TrustedProxies, accept_forwarding
from tests.servers import LiveServer

CLIENT = [
    ("host", "proxy:8080"),
    ("authorization", "Bearer client-token"),
    ("content-type", "application/json; format=pandas-split"),
    ("content-length", "10"),
    ("connection", "keep-alive, x-hop"),
    ("x-hop", "1"),
    ("keep-alive", "timeout=5"),
    ("user-agent", "legacy-app/1.0"),
    ("accept", "application/json"),
    ("cookie", "a=b"),
    ("accept-encoding", "gzip"),
    ("x-custom", "y"),
    ("traceparent", "00-abc-def-01"),
    ("x-request-id", "client-id"),
    ("x-forwarded-for", "10.0.0.1"),
]


def test_serverless_gets_an_allow_list_and_the_translated_content_type() -> None:
    out = dict(
        headers.to_serverless(
            CLIENT,
            content_type="application/json",
            token=None,
            request_id="rid",
        )
    )
    assert out == {
        "authorization": "Bearer client-token",
        "user-agent": "legacy-app/1.0",
        "accept": "application/json",
        "traceparent": "00-abc-def-01",
        "content-type": "application/json",
        "x-request-id": "rid",
        # As `accept_forwarding` settled it where the request came in.
        "x-forwarded-for": "10.0.0.1",
    }


def test_configured_token_replaces_the_clients() -> None:
    out = headers.to_serverless(CLIENT, content_type=None, token="svc", request_id="r")
    assert [v for n, v in out if n == "authorization"] == ["Bearer svc"]
    assert "content-type" not in dict(out)


def test_legacy_token_replaces_the_clients_authorization() -> None:
    out = headers.to_legacy(CLIENT, request_id="rid", token="legacy-svc")
    assert [v for n, v in out if n == "authorization"] == ["Bearer legacy-svc"]
    assert dict(out)["cookie"] == "a=b"  # everything else still end to end (§7.2)


def test_legacy_without_a_token_passes_the_clients_authorization() -> None:
    out = headers.to_legacy(CLIENT, request_id="rid")
    assert [v for n, v in out if n == "authorization"] == ["Bearer client-token"]


def test_legacy_gets_everything_end_to_end() -> None:
    out = headers.to_legacy(CLIENT, request_id="rid")
    names = [n for n, _ in out]
    for dropped in ("host", "content-length", "connection", "keep-alive", "x-hop"):
        assert dropped not in names
    for kept in ("authorization", "content-type", "cookie", "x-custom", "accept-encoding"):
        assert kept in names
    assert dict(out)["content-type"] == "application/json; format=pandas-split"
    assert [v for n, v in out if n == "x-request-id"] == ["rid"]


def test_passthrough_reply_drops_hop_by_hop_and_this_hops_own() -> None:
    upstream = [
        ("Content-Type", "application/json"),
        ("Content-Length", "3"),
        ("Server", "gunicorn"),
        ("Date", "x"),
        ("Transfer-Encoding", "chunked"),
        ("Set-Cookie", "s=1"),
        ("Retry-After", "3"),
    ]
    assert headers.from_passthrough(upstream) == [
        ("content-type", "application/json"),
        ("retry-after", "3"),
    ]
    assert ("set-cookie", "s=1") in headers.from_passthrough(upstream, pass_set_cookie=True)


def test_decode_lowercases_names() -> None:
    assert headers.decode([(b"X-A", b"\xe9")]) == [("x-a", "é")]


# --- forwarding (§7.1, §7.2): settled once where the request comes in ---------------------

SPOOFED = [
    (b"x-forwarded-for", b"6.6.6.6"),
    (b"forwarded", b"for=6.6.6.6;proto=https"),
    (b"x-forwarded-host", b"evil.example"),
    (b"x-forwarded-proto", b"https"),
    (b"x-real-ip", b"6.6.6.6"),
    (b"user-agent", b"ua"),
]


def test_an_untrusted_peers_forwarding_headers_are_dropped_and_the_peer_appended() -> None:
    client, out = accept_forwarding(SPOOFED, "203.0.113.5", TrustedProxies.parse([]))
    assert client == "203.0.113.5"
    assert out == [(b"user-agent", b"ua"), (b"x-forwarded-for", b"203.0.113.5")]


def test_a_trusted_proxys_headers_are_kept_and_appended_to() -> None:
    trusted = TrustedProxies.parse(["10.0.0.0/8"])
    raw = [
        (b"x-forwarded-for", b"198.51.100.1, 10.1.1.1"),
        (b"x-forwarded-for", b"10.2.2.2"),
        (b"forwarded", b"for=198.51.100.1"),
        (b"x-forwarded-proto", b"https"),
    ]
    client, out = accept_forwarding(raw, "10.3.3.3", trusted)
    # The last address that is not itself a trusted proxy is the client.
    assert client == "198.51.100.1"
    assert dict(out) == {
        b"x-forwarded-proto": b"https",
        b"x-forwarded-for": b"198.51.100.1, 10.1.1.1, 10.2.2.2, 10.3.3.3",
        b"forwarded": b"for=198.51.100.1, for=10.3.3.3",
    }


@pytest.mark.parametrize(
    ("entries", "peer", "trusted"),
    [
        pytest.param(["127.0.0.1"], "127.0.0.1", True, id="address"),
        pytest.param(["10.0.0.0/8"], "10.200.1.1", True, id="network"),
        pytest.param(["::1"], "::1", True, id="ipv6"),
        pytest.param(["*"], "198.51.100.9", True, id="everyone"),
        pytest.param(["proxy.local"], "proxy.local", True, id="literal"),
        pytest.param(["10.0.0.0/8"], "11.0.0.1", False, id="outside"),
        pytest.param(["127.0.0.1"], None, False, id="no-peer"),
        pytest.param([], "127.0.0.1", False, id="none-configured"),
    ],
)
def test_trusted_proxies(entries: list[str], peer: str | None, trusted: bool) -> None:
    assert TrustedProxies.parse(entries).trusts(peer) is trusted


def test_a_trusted_chain_of_only_proxies_names_its_first_entry() -> None:
    trusted = TrustedProxies.parse(["10.0.0.0/8"])
    client, out = accept_forwarding([(b"x-forwarded-for", b"10.1.1.1:5000")], "10.9.9.9", trusted)
    assert client == "10.1.1.1"
    assert dict(out)[b"x-forwarded-for"] == b"10.1.1.1:5000, 10.9.9.9"


def test_an_ipv6_peer_is_quoted_in_forwarded() -> None:
    trusted = TrustedProxies.parse(["::1"])
    client, out = accept_forwarding([(b"forwarded", b"for=1.2.3.4")], "::1", trusted)
    assert client == "::1"
    assert dict(out)[b"forwarded"] == b'for=1.2.3.4, for="[::1]"'
    assert dict(out)[b"x-forwarded-for"] == b"::1"


def test_without_a_peer_nothing_is_appended() -> None:
    assert accept_forwarding(SPOOFED, None, TrustedProxies()) == (None, [(b"user-agent", b"ua")])


ENV = {"SVC_TOKEN": "svc-secret", "LEGACY_TOKEN": "legacy-secret"}


def proxy_config(
    serverless: LiveServer, legacy: LiveServer, *, percent: float, **extra: Any
) -> Any:
    legacy_backend = {"url": legacy.url, **extra.pop("legacy_backend", {})}
    doc: dict[str, Any] = {
        "backends": {
            "serverless": {"url": serverless.url, **extra.pop("serverless_backend", {})},
            "legacy": legacy_backend,
        },
        "models": {"iris": {"stages": {"Production": "1"}, "serverless_percent": percent}},
        **extra,
    }
    return parse_config(doc, ENV)


def served(config: Any) -> LiveServer:
    # As `serving-proxy serve` runs it: uvicorn's own proxy_headers off.
    return LiveServer(create_app(config), proxy_headers=False)


def sent_headers(server: LiveServer) -> dict[str, str]:
    stats = httpx.get(server.url + "/_sim/stats").json()
    return stats["last_request"]["headers"]  # type: ignore[no-any-return]


SPOOF = {
    "x-forwarded-for": "6.6.6.6",
    "forwarded": "for=6.6.6.6",
    "x-forwarded-host": "evil.example",
    "x-forwarded-proto": "https",
    "x-real-ip": "6.6.6.6",
    "authorization": "Bearer client-token",
    "content-type": "application/json; format=pandas-split",
}
BODY = b'{"columns": ["a"], "data": [[1]]}'
FORWARDING_NAMES = ("forwarded", "x-forwarded-host", "x-forwarded-proto", "x-real-ip")


@pytest.mark.integration
@pytest.mark.usefixtures("reset_simulators")
@pytest.mark.parametrize("percent", [0.0, 100.0], ids=["legacy", "serverless"])
def test_spoofed_forwarding_never_reaches_either_backend(
    serverless: LiveServer, legacy: LiveServer, percent: float
) -> None:
    with served(proxy_config(serverless, legacy, percent=percent)) as proxy:
        r = httpx.post(proxy.url + "/model/iris/1/invocations", content=BODY, headers=SPOOF)
    assert r.status_code == 200
    seen = sent_headers(legacy if percent == 0 else serverless)
    assert seen["x-forwarded-for"] == "127.0.0.1"
    for name in FORWARDING_NAMES:
        assert name not in seen


@pytest.mark.integration
@pytest.mark.usefixtures("reset_simulators")
def test_a_trusted_proxys_forwarding_reaches_legacy_appended_to(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    config = proxy_config(
        serverless, legacy, percent=0.0, server={"trusted_proxies": ["127.0.0.1"]}
    )
    with served(config) as proxy:
        r = httpx.post(proxy.url + "/model/iris/1/invocations", content=BODY, headers=SPOOF)
    assert r.status_code == 200
    seen = sent_headers(legacy)
    assert seen["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
    assert seen["forwarded"] == "for=6.6.6.6, for=127.0.0.1"
    assert (seen["x-forwarded-host"], seen["x-real-ip"]) == ("evil.example", "6.6.6.6")


@pytest.mark.integration
@pytest.mark.usefixtures("reset_simulators")
@pytest.mark.parametrize(
    ("legacy_backend", "expected"),
    [
        pytest.param({"token_env": "LEGACY_TOKEN"}, "Bearer legacy-secret", id="injected"),
        pytest.param({}, "Bearer client-token", id="passthrough"),
    ],
)
def test_legacy_token_env_is_sent_to_the_legacy_backend(
    serverless: LiveServer, legacy: LiveServer, legacy_backend: dict[str, Any], expected: str
) -> None:
    config = proxy_config(
        serverless,
        legacy,
        percent=0.0,
        legacy_backend=legacy_backend,
        client_auth={"mode": "none"},
    )
    with served(config) as proxy:
        r = httpx.post(proxy.url + "/model/iris/1/invocations", content=BODY, headers=SPOOF)
    assert r.status_code == 200
    assert sent_headers(legacy)["authorization"] == expected


async def _cookie_jar(request: Request) -> Response:
    return Response(b"[1]", media_type="application/json", headers={"set-cookie": "s=1; Path=/"})


@pytest.fixture(scope="module")
def cookie_backend() -> Iterator[LiveServer]:
    """A backend that sets a cookie on every reply."""
    app = Starlette(routes=[Route("/{path:path}", _cookie_jar, methods=["POST"])])
    with LiveServer(app) as server:
        yield server


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "backend_key"),
    [
        pytest.param("/model/iris/1/invocations", "legacy_backend", id="legacy-1.4"),
        pytest.param("/serving-endpoints/iris/invocations", "serverless_backend", id="new-1.5"),
    ],
)
@pytest.mark.parametrize("allowed", [False, True], ids=["dropped", "pass_set_cookie"])
def test_set_cookie_on_pass_through_only_when_the_backend_allows(
    cookie_backend: LiveServer, path: str, backend_key: str, allowed: bool
) -> None:
    config = proxy_config(
        cookie_backend, cookie_backend, percent=0.0, **{backend_key: {"pass_set_cookie": allowed}}
    )
    with served(config) as proxy:
        r = httpx.post(proxy.url + path, content=BODY, headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert ("set-cookie" in r.headers) is allowed
