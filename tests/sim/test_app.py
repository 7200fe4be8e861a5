"""The simulator app: what both kinds share, the kind check and the request counters.

Behaviour tests run twice, in-process (httpx.ASGITransport) and over a real loopback socket
(uvicorn in a thread); what only a socket can show (drop, broken servers) runs on sockets.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sim.app import create_simulator_app
from sim.dialect import SimulatorKind
from sim.faults import Faults
from tests.sim.support import (
    CSV,
    RECORDS,
    SPLIT,
    Connect,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("legacy", "serverless"),
    [
        pytest.param(
            ("application/json; format=pandas-split", SPLIT),
            ("application/json", {"dataframe_split": SPLIT}),
            id="split",
        ),
        pytest.param(
            ("application/json", RECORDS),
            ("application/json", {"dataframe_records": RECORDS}),
            id="records",
        ),
        pytest.param(
            ("application/json", {"instances": [[[1, 2], [3, 4]], [[5, None]]]}),
            ("application/json", {"instances": [[[1, 2], [3, 4]], [[5, None]]]}),
            id="tensor",
        ),
        pytest.param(("text/csv", CSV), ("text/csv", CSV), id="csv"),
    ],
)
async def test_same_data_same_answer_on_both_kinds(
    connect: Connect, legacy: tuple[str, Any], serverless: tuple[str, Any]
) -> None:
    answers = []
    sides: tuple[tuple[SimulatorKind, tuple[str, Any]], ...] = (
        ("legacy", legacy),
        ("serverless", serverless),
    )
    for kind, (content_type, body) in sides:
        client = await connect(create_simulator_app(kind))
        content = body if isinstance(body, str) else json.dumps(body)
        response = await client.post(
            "/invocations", content=content, headers={"content-type": content_type}
        )
        assert response.status_code == 200
        answers.append(response.text)
    assert f'{{"predictions": {answers[0]}}}' == answers[1]


@pytest.mark.parametrize("kind", ["legacy", "serverless"])
@pytest.mark.parametrize(
    ("path", "body"), [("/ping", b"\n"), ("/health", b"\n"), ("/version", None)]
)
async def test_auxiliary_endpoints(
    connect: Connect, kind: SimulatorKind, path: str, body: bytes
) -> None:
    client = await connect(create_simulator_app(kind))
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    expected = {"legacy": b"1.30.1", "serverless": b"2.22.5"}[kind] if body is None else body
    assert response.content == expected


@pytest.mark.parametrize(
    ("kind", "allow", "media_type"),
    [("legacy", "OPTIONS, POST", "text/html"), ("serverless", "POST", "application/json")],
)
async def test_get_on_invocations_is_405(
    connect: Connect, kind: SimulatorKind, allow: str, media_type: str
) -> None:
    client = await connect(create_simulator_app(kind))
    response = await client.get("/invocations")
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.headers["content-type"].startswith(media_type)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        create_simulator_app("mlflow3")  # type: ignore[arg-type]


# --- statistics ------------------------------------------------------------------------------


async def test_stats_count_requests_and_keep_the_last(connect: Connect) -> None:
    client = await connect(create_simulator_app("serverless"))
    await client.post("/serving-endpoints/a/invocations", json={"inputs": [1]})
    await client.post("/serving-endpoints/a/invocations", json={"inputs": [2]})
    await client.post(
        "/serving-endpoints/b/invocations?x=1",
        content=b'{"inputs": [3]}',
        headers={"content-type": "application/json", "authorization": "Bearer t", "x-a": "1"},
    )
    await client.get("/_sim/faults")
    stats = (await client.get("/_sim/stats")).json()
    assert stats["total"] == 3
    assert stats["by_path"] == {
        "/serving-endpoints/a/invocations": 2,
        "/serving-endpoints/b/invocations": 1,
    }
    last = stats["last_request"]
    assert (last["method"], last["path"], last["query"]) == (
        "POST",
        "/serving-endpoints/b/invocations",
        "x=1",
    )
    assert last["body"] == '{"inputs": [3]}'
    assert last["headers"]["authorization"] == "Bearer t"
    assert last["headers"]["content-type"] == "application/json"
    assert last["headers"]["x-a"] == "1"

    assert (await client.post("/_sim/reset")).status_code == 204
    assert (await client.get("/_sim/stats")).json() == {
        "total": 0,
        "by_path": {},
        "last_request": None,
        "max_in_flight": 0,
        "unauthorized": 0,
    }


async def test_unknown_control_paths_are_404_and_not_counted(connect: Connect) -> None:
    client = await connect(create_simulator_app("legacy"))
    assert (await client.get("/_sim/nothing")).status_code == 404
    assert (await client.get("/_sim/stats")).json()["total"] == 0


def test_app_state_exposes_the_simulator() -> None:
    app = create_simulator_app("legacy")
    app.state.simulator.faults = Faults(status=503)
    assert app.state.simulator.faults.status == 503
