"""Header rules of protocols.md §7, as tables."""

from __future__ import annotations

from proxy import headers

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
            client_host="127.0.0.1",
        )
    )
    assert out == {
        "authorization": "Bearer client-token",
        "user-agent": "legacy-app/1.0",
        "accept": "application/json",
        "traceparent": "00-abc-def-01",
        "content-type": "application/json",
        "x-request-id": "rid",
        "x-forwarded-for": "10.0.0.1, 127.0.0.1",
    }


def test_configured_token_replaces_the_clients() -> None:
    out = headers.to_serverless(
        CLIENT, content_type=None, token="svc", request_id="r", client_host=None
    )
    assert [v for n, v in out if n == "authorization"] == ["Bearer svc"]
    assert "content-type" not in dict(out)
    assert "x-forwarded-for" not in dict(out)


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
        ("set-cookie", "s=1"),
        ("retry-after", "3"),
    ]


def test_decode_lowercases_names() -> None:
    assert headers.decode([(b"X-A", b"\xe9")]) == [("x-a", "é")]
