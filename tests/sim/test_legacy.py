"""The legacy simulator speaks MLflow 1.30.1: answers and refusals."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sim.app import create_simulator_app
from tests.sim.support import (
    CSV,
    RECORDS,
    SPLIT,
    Connect,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param("application/json; format=pandas-split", SPLIT, id="pandas-split"),
        pytest.param("application/json; format=pandas-records", RECORDS, id="pandas-records"),
        pytest.param(
            "application/json; format=pandas-records",
            {"a": [1, 4.5], "b": [2, None], "c": [3, 1]},
            id="pandas-records-columns",
        ),
        pytest.param("application/json", SPLIT, id="plain-dict-is-split"),
        pytest.param("application/json", RECORDS, id="plain-list-is-records"),
        pytest.param("application/json", {"instances": RECORDS}, id="instances"),
        pytest.param("application/json", {"inputs": [[1, 2, 3], [4.5, None, 1]]}, id="inputs"),
        pytest.param("application/json; format=pandas-split; charset=UTF-8", SPLIT, id="utf8"),
        pytest.param("text/csv", CSV, id="csv"),
    ],
)
async def test_legacy_answers_bare_predictions(
    connect: Connect, content_type: str, body: Any
) -> None:
    client = await connect(create_simulator_app("legacy"))
    content = body if isinstance(body, str) else json.dumps(body)
    response = await client.post(
        "/model/iris/1/invocations", content=content, headers={"content-type": content_type}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.text == "[6.0, NaN]"


@pytest.mark.parametrize(
    ("path", "content_type", "body", "status", "media_type", "fragment"),
    [
        pytest.param(
            "/invocations",
            "application/json; format=pandas-columns",
            "{}",
            415,
            "text/plain",
            "Formats: ['pandas-records', 'pandas-split']. Got "
            "'application/json; format=pandas-columns'.",
            id="unknown-format",
        ),
        pytest.param(
            "/invocations",
            "application/json; format=pandas-split; charset=latin-1",
            "{}",
            415,
            "text/plain",
            "only supports UTF-8",
            id="charset-latin1",
        ),
        pytest.param(
            "/invocations", None, "{}", 500, "text/html", "Internal Server Error", id="no-type"
        ),
        pytest.param(
            "/invocations",
            "application/json",
            '{"instances": [1], "inputs": [1]}',
            400,
            "application/json",
            'One of "instances" and "inputs" must be specified',
            id="instances-and-inputs",
        ),
        pytest.param(
            "/invocations",
            "application/json",
            '{"dataframe_split": {"data": [[1]]}}',
            400,
            "application/json",
            "with the `split` orient",
            id="v2-body",
        ),
        pytest.param(
            "/invocations",
            "application/json; format=pandas-records",
            '"text"',
            400,
            "application/json",
            "with the `records` orient",
            id="records-not-a-list",
        ),
        pytest.param(
            "/invocations",
            "application/json",
            "{broken",
            400,
            "application/json",
            "Ensure that input is a valid JSON formatted string.",
            id="malformed-json",
        ),
        pytest.param(
            "/invocations",
            "application/json",
            "null",
            400,
            "application/json",
            "valid JSON list or dictionary",
            id="scalar",
        ),
        pytest.param(
            "/serving-endpoints/iris/invocations",
            "application/json",
            "[]",
            404,
            "text/html",
            "Not Found",
            id="not-a-legacy-path",
        ),
    ],
)
async def test_legacy_refuses_like_mlflow_1(
    connect: Connect,
    path: str,
    content_type: str | None,
    body: str,
    status: int,
    media_type: str,
    fragment: str,
) -> None:
    client = await connect(create_simulator_app("legacy"))
    headers = {} if content_type is None else {"content-type": content_type}
    response = await client.post(path, content=body.encode(), headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"].split(";")[0] == media_type
    if media_type == "application/json":
        assert response.json()["error_code"] == "BAD_REQUEST"
        assert fragment in response.json()["message"]
    else:
        assert fragment in response.text
