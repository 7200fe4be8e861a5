"""The whole app in-process, its upstreams real simulators on loopback (architecture §1.5).

Each test builds the app from a config, runs its lifespan, and talks to it through
httpx's ASGI transport; the simulators record what the proxy sent them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from proxy import errors, jsoncodec
from proxy.app import create_app
from proxy.config import parse_config
from proxy.config.backends import replica_id_of
from sim.serve import serve_broken
from tests.servers import LiveServer

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.integration,
    pytest.mark.usefixtures("reset_simulators"),
]

SPLIT = b'{"columns": ["a", "b"], "data": [[1, 2.5], [3, 4]]}'
SPLIT_CT = "application/json; format=pandas-split"


def stats(server: LiveServer) -> dict[str, Any]:
    return httpx.get(server.url + "/_sim/stats").json()  # type: ignore[no-any-return]


def faults(server: LiveServer, **knobs: Any) -> None:
    httpx.put(server.url + "/_sim/faults", json=knobs).raise_for_status()


def make_config(serverless: LiveServer, legacy: LiveServer | None = None, **extra: Any) -> Any:
    doc: dict[str, Any] = {
        "backends": {
            "serverless": {
                "url": serverless.url,
                "path": "/model-endpoint/{name}/{version}/invocations",
            }
        },
        "models": {
            "iris": {"stages": {"Production": "3"}},
            "pinned": {"versions": ["1"], "endpoint": "pinned-ep"},
        },
    }
    if legacy is not None:
        doc["backends"]["legacy"] = {"url": legacy.url}
    for key, value in extra.items():
        if key == "models":
            doc["models"].update(value)
        else:
            doc[key] = value
    return parse_config(doc, {"SVC_TOKEN": "svc-secret"})


@asynccontextmanager
async def proxy(config: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(config)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("10.1.2.3", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            yield client


async def test_pandas_split_is_translated_both_ways(serverless: LiveServer) -> None:
    async with proxy(make_config(serverless)) as client:
        r = await client.post(
            "/model/iris/Production/invocations",
            content=SPLIT,
            headers={"content-type": SPLIT_CT, "authorization": "Bearer client"},
        )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.content == b"[3.5, 7.0]"
    sent = stats(serverless)["last_request"]
    assert sent["path"] == "/model-endpoint/iris/3/invocations"
    assert sent["headers"]["content-type"] == "application/json"
    assert sent["headers"]["authorization"] == "Bearer client"
    assert sent["headers"]["x-request-id"] == r.headers["x-request-id"]
    assert sent["headers"]["x-forwarded-for"] == "10.1.2.3"
    assert httpx.Response(200, content=sent["body"]).json() == {
        "dataframe_split": {"columns": ["a", "b"], "data": [[1, 2.5], [3, 4]]}
    }


async def test_configured_token_replaces_the_clients(serverless: LiveServer) -> None:
    config = make_config(
        serverless,
        models={"tok": {"serverless": {"token_env": "SVC_TOKEN"}}},
        client_auth={"mode": "none"},
    )
    async with proxy(config) as client:
        r = await client.post(
            "/model/tok/1/invocations",
            content=b"[]",
            headers={"content-type": "application/json", "authorization": "Bearer client"},
        )
    assert r.status_code == 200
    assert stats(serverless)["last_request"]["headers"]["authorization"] == "Bearer svc-secret"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/model/nope/1/invocations", 404, id="unknown-model"),
        pytest.param("/model/iris/Staging/invocations", 404, id="unknown-stage"),
        pytest.param("/model/pinned/2/invocations", 404, id="unlisted-version"),
        pytest.param("/model/iris/latest/invocations", 404, id="not-a-version"),
    ],
)
async def test_unknown_model_never_reaches_upstream(
    serverless: LiveServer, path: str, status: int
) -> None:
    async with proxy(make_config(serverless)) as client:
        r = await client.post(path, content=SPLIT, headers={"content-type": SPLIT_CT})
    assert r.status_code == status
    assert r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert r.headers["content-type"] == "application/json"
    assert stats(serverless)["total"] == 0


@pytest.mark.parametrize(
    ("method", "status", "body"),
    [
        pytest.param("GET", 405, errors.E14_PAGE, id="get"),
        pytest.param("HEAD", 405, "", id="head"),
        pytest.param("PUT", 405, errors.E14_PAGE, id="put"),
        pytest.param("OPTIONS", 200, "", id="options"),
    ],
)
async def test_methods_on_invocations(
    serverless: LiveServer, method: str, status: int, body: str
) -> None:
    async with proxy(make_config(serverless)) as client:
        for path in ("/model/iris/1/invocations", "/invocations"):
            r = await client.request(method, path)
            assert r.status_code == status
            assert r.headers["content-type"] == errors.HTML
            assert set(r.headers["allow"].split(", ")) == {"OPTIONS", "POST"}
            assert r.text == body
    assert stats(serverless)["total"] == 0


@pytest.mark.parametrize("word", ["ping", "health", "version"])
async def test_auxiliary_endpoints_are_local(serverless: LiveServer, word: str) -> None:
    expected = "1.30.1" if word == "version" else "\n"
    async with proxy(make_config(serverless)) as client:
        for path in (f"/{word}", f"/model/iris/Production/{word}"):
            r = await client.get(path)
            assert (r.status_code, r.text) == (200, expected)
            assert r.headers["content-type"] == "application/json"
        head = await client.head(f"/{word}")
        post = await client.post(f"/{word}")
        unknown = await client.get(f"/model/nope/1/{word}")
    assert (head.status_code, head.content) == (200, b"")
    assert post.status_code == 405
    assert set(post.headers["allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    assert unknown.status_code == 404
    assert stats(serverless)["total"] == 0


async def test_unknown_path_is_the_werkzeug_404(serverless: LiveServer) -> None:
    async with proxy(make_config(serverless)) as client:
        r = await client.get("/predict")
        post = await client.post("/invocations", content=b"[]")
    assert (r.status_code, r.headers["content-type"], r.text) == (404, errors.HTML, errors.E15_PAGE)
    assert post.status_code == 404


async def test_missing_content_type_is_the_flask_500_and_not_forwarded(
    serverless: LiveServer,
) -> None:
    async with proxy(make_config(serverless)) as client:
        r = await client.post("/model/iris/1/invocations", content=SPLIT)
    assert (r.status_code, r.headers["content-type"], r.text) == (500, errors.HTML, errors.E11_PAGE)
    assert stats(serverless)["total"] == 0


async def test_body_over_the_limit_is_413(serverless: LiveServer) -> None:
    config = make_config(serverless, limits={"max_body_bytes": 20})
    async with proxy(config) as client:
        r = await client.post(
            "/model/iris/1/invocations", content=SPLIT, headers={"content-type": SPLIT_CT}
        )
    assert r.status_code == 413
    assert r.json() == {
        "error_code": "BAD_REQUEST",
        "message": "Request body exceeds the 20 byte limit.",
    }


async def test_bad_legacy_body_is_a_local_1x_error(serverless: LiveServer) -> None:
    async with proxy(make_config(serverless)) as client:
        r = await client.post(
            "/model/iris/1/invocations",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 400
    body = r.json()
    assert body["error_code"] == "BAD_REQUEST"
    assert body["message"] == errors.E1_MALFORMED_JSON
    assert "stack_trace" in body
    assert stats(serverless)["total"] == 0


@pytest.mark.parametrize(
    ("knobs", "status", "code"),
    [
        pytest.param({"status": 401}, 401, "CUSTOMER_UNAUTHORIZED", id="401"),
        pytest.param({"status": 503}, 503, "TEMPORARILY_UNAVAILABLE", id="503"),
        pytest.param({"status": 502}, 502, "INTERNAL_ERROR", id="502"),
        # §6.4 M2 (revised): an upstream 5xx stays a 5xx (M12), never a client 400.
        pytest.param({"status": 500}, 500, "INTERNAL_ERROR", id="500-is-m12"),
        pytest.param({"malformed": True}, 502, "INTERNAL_ERROR", id="malformed-200"),
        pytest.param({"drop": True}, 503, "TEMPORARILY_UNAVAILABLE", id="dropped"),
    ],
)
async def test_upstream_failures_in_legacy_shape(
    serverless: LiveServer, knobs: dict[str, Any], status: int, code: str
) -> None:
    faults(serverless, **knobs)
    async with proxy(make_config(serverless)) as client:
        r = await client.post(
            "/model/iris/1/invocations", content=SPLIT, headers={"content-type": SPLIT_CT}
        )
        faults(serverless)
        after = await client.post(
            "/model/iris/1/invocations", content=SPLIT, headers={"content-type": SPLIT_CT}
        )
    assert (r.status_code, r.json()["error_code"]) == (status, code)
    assert r.headers["content-type"] == "application/json"
    assert after.status_code == 200


async def test_upstream_timeout_is_504(serverless: LiveServer) -> None:
    faults(serverless, delay_ms=1500)
    config = make_config(
        serverless,
        backends={"serverless": {"url": serverless.url, "timeout": {"connect": 1, "total": 0.2}}},
    )
    async with proxy(config) as client:
        r = await client.post(
            "/model/iris/1/invocations", content=SPLIT, headers={"content-type": SPLIT_CT}
        )
    assert r.status_code == 504
    assert r.json() == {
        "error_code": "TEMPORARILY_UNAVAILABLE",
        "message": "Request processing time exceeded limit",
    }


@pytest.mark.parametrize(
    ("mode", "status"), [("reset", 503), ("garbage", 502)], ids=["unreachable", "not-http"]
)
async def test_broken_upstreams(serverless: LiveServer, mode: str, status: int) -> None:
    async with serve_broken(mode) as url:  # type: ignore[arg-type]
        config = make_config(serverless, backends={"serverless": {"url": url}})
        async with proxy(config) as client:
            r = await client.post(
                "/model/iris/1/invocations", content=SPLIT, headers={"content-type": SPLIT_CT}
            )
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"


async def test_overload_is_503_and_the_proxy_keeps_serving(serverless: LiveServer) -> None:
    faults(serverless, delay_ms=300)
    config = make_config(serverless, limits={"max_in_flight": 1})
    async with proxy(config) as client:

        async def call() -> httpx.Response:
            return await client.post(
                "/model/iris/1/invocations", content=SPLIT, headers={"content-type": SPLIT_CT}
            )

        first, second = await asyncio.gather(call(), call())
        faults(serverless)
        third = await call()
    assert sorted([first.status_code, second.status_code]) == [200, 503]
    refused = first if first.status_code == 503 else second
    assert refused.json()["message"] == "Too many concurrent requests."
    assert third.status_code == 200


async def test_legacy_route_passes_bytes_unchanged(
    serverless: LiveServer, legacy: LiveServer
) -> None:
    config = make_config(serverless, legacy, models={"old": {"route": "legacy"}})
    async with proxy(config) as client:
        r = await client.post(
            "/model/old/2/invocations?x=1&y=%2F%20",
            content=SPLIT,
            headers={"content-type": SPLIT_CT, "authorization": "Bearer client", "x-app": "a"},
        )
    assert r.status_code == 200
    assert r.content == b"[3.5, 7.0]"
    sent = stats(legacy)["last_request"]
    # §1.4: the query string byte for byte, percent-escapes included.
    assert (sent["path"], sent["query"]) == ("/model/old/2/invocations", "x=1&y=%2F%20")
    assert sent["body"].encode() == SPLIT
    assert sent["headers"]["content-type"] == SPLIT_CT
    assert sent["headers"]["authorization"] == "Bearer client"
    assert sent["headers"]["x-app"] == "a"
    assert stats(serverless)["total"] == 0


async def test_mlflow2_models_map_the_url_only(serverless: LiveServer) -> None:
    config = make_config(serverless, models={"new": {"legacy_protocol": "mlflow2"}})
    body = b'{"inputs": [[1, 2]]}'
    async with proxy(config) as client:
        r = await client.post(
            "/model/new/1/invocations", content=body, headers={"content-type": "application/json"}
        )
    assert (r.status_code, r.content) == (200, b'{"predictions": [3.0]}')
    assert stats(serverless)["last_request"]["body"].encode() == body


@pytest.mark.parametrize(
    "path",
    ["/serving-endpoints/pinned-ep/invocations", "/model-endpoint/pinned/1/invocations"],
)
async def test_migrated_clients_pass_through(serverless: LiveServer, path: str) -> None:
    body = b'{"dataframe_records": [{"a": 1}]}'
    async with proxy(make_config(serverless)) as client:
        r = await client.post(path, content=body, headers={"content-type": "application/json"})
        bad = await client.post(
            path,
            content=b'{"columns": ["a"], "data": [[1]]}',
            headers={"content-type": "application/json"},
        )
    assert (r.status_code, r.content) == (200, b'{"predictions": [1.0]}')
    assert r.headers["content-type"] == "application/json"
    sent = stats(serverless)["last_request"]
    assert sent["path"] == "/model-endpoint/pinned/1/invocations"
    # §1.5.2: an upstream error reaches a migrated client as the upstream wrote it.
    assert bad.status_code == 400


@pytest.mark.parametrize(
    "path",
    ["/serving-endpoints/nope/invocations", "/model-endpoint/pinned/9/invocations"],
)
async def test_unknown_new_style_endpoint(serverless: LiveServer, path: str) -> None:
    async with proxy(make_config(serverless)) as client:
        r = await client.post(path, content=b"{}", headers={"content-type": "application/json"})
        get = await client.get(path)
    assert r.status_code == 404
    assert r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert "is not served" in r.json()["message"]
    assert get.status_code == 405
    assert stats(serverless)["total"] == 0


async def test_health_endpoints(serverless: LiveServer) -> None:
    async with proxy(make_config(serverless, server={"replica_id": "proxy-a"})) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = (await client.get("/readyz")).json()
        assert ready == {"status": "ready", "replica_id": "proxy-a", "stale": False}


async def test_one_access_line_per_request_without_tokens_or_bodies(
    serverless: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="serving_proxy.access")
    async with proxy(
        make_config(
            serverless,
            models={"tok": {"serverless": {"token_env": "SVC_TOKEN"}}},
            client_auth={"mode": "none"},
        )
    ) as client:
        ok = await client.post(
            "/model/tok/1/invocations",
            content=SPLIT,
            headers={"content-type": SPLIT_CT, "authorization": "Bearer client-secret"},
        )
        bad = await client.post("/model/nope/1/invocations", content=SPLIT)
    lines = [r.getMessage() for r in caplog.records if r.name == "serving_proxy.access"]
    assert len(lines) == 2
    # No replica_id configured: HOSTNAME, else the listener's host:port, names this one.
    config = make_config(serverless)
    replica = replica_id_of(config.server, config.listen, os.environ)
    assert all(jsoncodec.loads(line)["replica_id"] == replica for line in lines)
    assert ok.headers["x-request-id"] in lines[0]
    assert '"flag":"NR"' in lines[1]
    assert bad.headers["x-request-id"] in lines[1]
    for line in lines:
        assert "client-secret" not in line
        assert "svc-secret" not in line
        # No part of the body: its column names and its one distinctive number spelling.
        assert '"columns"' not in line
        assert "[1, 2.5]" not in line


async def test_recording_samples_legacy_requests_when_turned_on(
    serverless: LiveServer, tmp_path: Any
) -> None:
    path = tmp_path / "recorded.jsonl"
    config = make_config(
        serverless, recording={"enabled": True, "path": str(path), "sample_rate": 1.0}
    )
    async with proxy(config) as client:
        r = await client.post(
            "/model/iris/3/invocations",
            content=SPLIT,
            headers={"content-type": SPLIT_CT, "authorization": "Bearer never-recorded"},
        )
    assert r.status_code == 200
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    assert "never-recorded" not in lines[0]
    line = httpx.Response(200, content=lines[0]).json()
    assert line["id"] == "recorded/iris/3"
    assert line["legacy"] == {"content_type": SPLIT_CT, "body": SPLIT.decode()}
    assert line["serverless"]["content_type"] == "application/json"


async def test_recording_is_off_by_default(serverless: LiveServer, tmp_path: Any) -> None:
    async with proxy(make_config(serverless)) as client:
        await client.post(
            "/model/iris/3/invocations", content=SPLIT, headers={"content-type": SPLIT_CT}
        )
    assert list(tmp_path.iterdir()) == []


def in_flight(exposition: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(exposition):
        if family.name == "serving_proxy_requests_in_flight":
            return float(family.samples[0].value)
    raise AssertionError("no in-flight gauge")


async def test_the_in_flight_gauge_counts_requests_being_served(serverless: LiveServer) -> None:
    # Long enough that a loaded machine still scrapes while the request waits upstream.
    faults(serverless, delay_ms=1500)
    async with proxy(make_config(serverless)) as client:
        before = in_flight((await client.get("/metrics")).text)
        slow = asyncio.ensure_future(
            client.post(
                "/model/iris/1/invocations", content=SPLIT, headers={"content-type": SPLIT_CT}
            )
        )
        # Bounded wait until the request is inside the proxy (it waits on the upstream).
        during = 0.0
        for _ in range(300):
            await asyncio.sleep(0.01)
            during = in_flight((await client.get("/metrics")).text)
            if during:
                break
        assert (await slow).status_code == 200
        after = in_flight((await client.get("/metrics")).text)
    assert (before, during, after) == (0, 1, 0)
