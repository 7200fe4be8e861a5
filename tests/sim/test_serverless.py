"""The serverless simulator speaks MLflow 2.22.5: answers, refusals and URLs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sim.app import create_simulator_app
from tests.sim.support import (
    CSV,
    EXPECTED,
    RECORDS,
    SPLIT,
    Connect,
    assert_predictions,
    body_of,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param("application/json", {"dataframe_split": SPLIT}, id="dataframe_split"),
        pytest.param("application/json", {"dataframe_records": RECORDS}, id="dataframe_records"),
        pytest.param(
            "application/json",
            {"dataframe_split": SPLIT, "params": {"threshold": 1}},
            id="params-ignored",
        ),
        pytest.param(
            "application/json; charset=utf-8", {"dataframe_split": SPLIT}, id="charset-utf8"
        ),
        pytest.param("application/json", {"instances": [[1, 2, 3], [4.5, None, 1]]}, id="inst"),
        pytest.param(
            "application/json",
            {"inputs": {"a": [1, 4.5], "b": [2, None], "c": [3, 1]}},
            id="inputs-columnar",
        ),
        pytest.param("text/csv", CSV, id="csv"),
    ],
)
async def test_serverless_answers_predictions(
    connect: Connect, content_type: str, body: Any
) -> None:
    client = await connect(create_simulator_app("serverless"))
    content = body if isinstance(body, str) else json.dumps(body)
    response = await client.post(
        "/serving-endpoints/iris/invocations",
        content=content,
        headers={"content-type": content_type},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    answer = body_of(response)
    assert list(answer) == ["predictions"]
    assert_predictions(answer["predictions"], EXPECTED)
    # stdlib json defaults, as MLflow writes them: spaced separators and a bare NaN (§5.2)
    assert response.text == '{"predictions": [6.0, NaN]}'


@pytest.mark.parametrize(
    "path",
    ["/invocations", "/model-endpoint/iris/1/invocations", "/serving-endpoints/x/invocations"],
)
async def test_serverless_serves_any_invocations_path(connect: Connect, path: str) -> None:
    client = await connect(create_simulator_app("serverless"))
    response = await client.post(path, json={"inputs": [[1, 2]]})
    assert response.json() == {"predictions": [3.0]}


@pytest.mark.parametrize(
    ("content_type", "body", "status", "media_type", "fragment"),
    [
        pytest.param(
            "application/json; format=pandas-split",
            json.dumps(SPLIT),
            415,
            "text/plain",
            "Unrecognized content type parameters: format. IMPORTANT",
            id="format-param",
        ),
        pytest.param(
            "application/json; charset=latin-1",
            "{}",
            415,
            "text/plain",
            "The scoring server only supports UTF-8",
            id="charset-latin1",
        ),
        pytest.param(
            "text/plain",
            "{}",
            415,
            "text/plain",
            "Types: ['text/csv', 'application/json']. Got 'text/plain'.",
            id="wrong-type",
        ),
        pytest.param(
            None, json.dumps(SPLIT), 500, "text/plain", "Internal Server Error", id="no-type"
        ),
        pytest.param(
            "application/json",
            json.dumps(SPLIT),
            400,
            "application/json",
            "Received dictionary with input fields: []",
            id="legacy-split-body",
        ),
        pytest.param(
            "application/json",
            json.dumps(RECORDS),
            400,
            "application/json",
            "Received a list.",
            id="legacy-list-body",
        ),
        pytest.param(
            "application/json",
            '{"instances": [1], "inputs": [1]}',
            400,
            "application/json",
            "Received dictionary with input fields: ['instances', 'inputs']",
            id="two-format-keys",
        ),
        pytest.param(
            "application/json",
            '{"dataframe_split": {"columns": ["a"]}}',
            400,
            "application/json",
            "must have 'data' field",
            id="split-without-data",
        ),
        pytest.param(
            "application/json",
            '{"dataframe_records": {"a": [1]}}',
            400,
            "application/json",
            "must be a list of records",
            id="records-not-a-list",
        ),
        pytest.param(
            "application/json",
            '{"inputs": {"a": [1, 2], "b": [1]}}',
            400,
            "application/json",
            "length of values",
            id="ragged-columns",
        ),
        pytest.param(
            "application/json",
            '{"dataframe_split": ',
            400,
            "application/json",
            "Invalid input. Ensure that input is a valid JSON formatted string.",
            id="malformed-json",
        ),
        pytest.param(
            "application/json",
            "42",
            400,
            "application/json",
            "Received unexpected input type",
            id="scalar",
        ),
        pytest.param("text/csv", "", 400, "application/json", "No columns to parse", id="empty"),
    ],
)
async def test_serverless_refuses_like_mlflow_2(
    connect: Connect,
    content_type: str | None,
    body: str,
    status: int,
    media_type: str,
    fragment: str,
) -> None:
    client = await connect(create_simulator_app("serverless"))
    headers = {} if content_type is None else {"content-type": content_type}
    response = await client.post("/invocations", content=body.encode(), headers=headers)
    assert response.status_code == status
    assert response.headers["content-type"].split(";")[0] == media_type
    if media_type == "application/json":
        assert response.json()["error_code"] == "BAD_REQUEST"
        assert fragment in response.json()["message"]
    else:
        assert fragment in response.text
