"""Every refusal of the admin API and the dashboard is a `ProxyError` rendered by the one
renderer, `proxy.errors.render`: the admin JSON shape, the record's flag in the access log,
and no error reply built in `proxy/admin/` itself."""

from __future__ import annotations

import ast
import base64
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy import admin, jsoncodec
from proxy.errors import AdminError, ProxyError, render
from tests.admin.test_api import AUTH, make_config, proxy
from tests.servers import LiveServer

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

WRONG_BASIC = {"authorization": "Basic " + base64.b64encode(b"ops:wrong").decode()}

REFUSALS = [
    pytest.param("GET", "/admin/models", {}, None, 401, "unauthorized", id="401"),
    pytest.param("GET", "/admin/report", {}, None, 401, "unauthorized", id="401-report"),
    pytest.param("GET", "/admin/dashboard", WRONG_BASIC, None, 401, "unauthorized", id="401-page"),
    pytest.param(
        "GET", "/admin/models?token=x", AUTH, None, 400, "credentials_in_query", id="400-query"
    ),
    pytest.param(
        "GET", "/admin/dashboard.js?key=x", AUTH, None, 400, "credentials_in_query", id="400-page"
    ),
    pytest.param("GET", "/admin/models/nope", AUTH, None, 404, "unknown_model", id="404-model"),
    pytest.param(
        "GET", "/admin/models/nope/history", AUTH, None, 404, "unknown_model", id="404-history"
    ),
    pytest.param("DELETE", "/admin/models/iris", AUTH, None, 405, "method_not_allowed", id="405"),
    pytest.param("GET", "/admin/audit?limit=0", AUTH, None, 400, "bad_request", id="400-limit"),
    pytest.param("PUT", "/admin/models/iris", AUTH, b"{", 400, "bad_request", id="400-not-json"),
    pytest.param(
        "PUT",
        "/admin/models/iris",
        AUTH,
        b'{"serverless_percent": 200}',
        400,
        "bad_change",
        id="400-change",
    ),
    pytest.param(
        "POST", "/admin/models/iris/pause", AUTH, b"[]", 400, "bad_request", id="400-not-object"
    ),
    pytest.param(
        "POST",
        "/admin/models/iris/rollback",
        AUTH,
        b'{"to": "nowhere"}',
        400,
        "bad_request",
        id="400-rollback-to",
    ),
]


def access_line(caplog: pytest.LogCaptureFixture, path: str) -> dict[str, Any]:
    """The one access-log line of the request to `path` (its query is never logged)."""
    lines = [
        jsoncodec.loads(r.getMessage())
        for r in caplog.records
        if r.name.startswith("serving_proxy") and r.getMessage().startswith("{")
    ]
    mine = [line for line in lines if line.get("path") == path.partition("?")[0]]
    assert len(mine) == 1, lines
    line: dict[str, Any] = mine[0]
    return line


def assert_rendered(r: httpx.Response, status: int, error: str) -> AdminError:
    """The reply is byte for byte what `render` makes of the `AdminError` it names."""
    assert r.status_code == status
    assert set(r.json()) == {"error", "message"}
    assert r.json()["error"] == error
    expected = AdminError(status, error, r.json()["message"])
    reply = render(expected)
    assert (r.content, r.headers["content-type"]) == (reply.body, reply.content_type)
    return expected


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="serving_proxy")
    return caplog


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "error"), REFUSALS)
async def test_every_admin_refusal_is_rendered_by_the_one_renderer(
    serverless: LiveServer,
    legacy: LiveServer,
    access_log: pytest.LogCaptureFixture,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    status: int,
    error: str,
) -> None:
    async with proxy(make_config(serverless, legacy)) as c:
        r = await c.request(method, path, headers=headers, content=body)
    expected = assert_rendered(r, status, error)
    assert isinstance(expected, ProxyError)
    line = access_line(access_log, path)
    # `render` is what writes the flag and the reason onto the request's record.
    assert (line["status"], line["flag"], line["detail"]) == (status, "ADM", expected.message)


@pytest.mark.parametrize(
    ("path", "error"),
    [
        pytest.param("/metrics", "metrics_off", id="metrics"),
        pytest.param("/admin/report", "stats_off", id="stats"),
    ],
)
async def test_reporting_turned_off_is_rendered_by_the_one_renderer(
    serverless: LiveServer,
    legacy: LiveServer,
    access_log: pytest.LogCaptureFixture,
    path: str,
    error: str,
) -> None:
    config = make_config(serverless, legacy)
    config = config.model_copy(
        update={"reporting": config.reporting.model_copy(update={"metrics": False, "stats": False})}
    )
    async with proxy(config) as c:
        r = await c.get(path, headers=AUTH)
    assert_rendered(r, 404, error)
    assert r.headers["cache-control"] == "no-store"
    assert access_line(access_log, path)["flag"] == "ADM"


def test_no_module_of_the_admin_package_builds_an_error_reply() -> None:
    """Replies with a status of their own would bypass `render`: only success replies
    are built in `proxy/admin/`; every refusal is raised. The one builder with a status,
    `api._json`, takes a `Success` (200 or 202, which mypy holds every caller to)."""
    for source in Path(admin.__file__).parent.glob("*.py"):
        tree = ast.parse(source.read_text())
        allowed: set[int] = set()
        for node in ast.walk(tree):
            if (
                source.name == "api.py"
                and isinstance(node, ast.FunctionDef)
                and node.name == "_json"
            ):
                status = node.args.args[1]
                assert ast.unparse(status.annotation or ast.Constant(None)) == "Success"
                allowed |= {n.lineno for n in ast.walk(node) if isinstance(n, ast.Call)}
            if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "Success":
                assert ast.unparse(node.value) == "Literal[200, 202]"
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.lineno not in allowed:
                keywords = {k.arg for k in node.keywords}
                assert "status_code" not in keywords, f"{source.name}:{node.lineno}"
