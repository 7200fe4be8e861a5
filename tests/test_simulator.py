"""The simulator: toy model, both protocols, corpus replay, fault knobs, stats and CLI.

Behaviour tests run twice, in-process (httpx.ASGITransport) and over a real loopback socket
(uvicorn in a thread); what only a socket can show (drop, broken servers) runs on sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from proxy.simulator import (
    Faults,
    Kind,
    add_simulate_arguments,
    create_simulator_app,
    predict,
    serve_broken,
)
from tests.servers import LiveServer

pytestmark = pytest.mark.anyio

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
CASES = sorted((CORPUS / "cases").glob("*.json"))
needs_corpus = pytest.mark.skipif(not CASES, reason=f"no corpus at {CORPUS}")

Connect = Callable[[Starlette], Awaitable[httpx.AsyncClient]]


@pytest.fixture
def anyio_backend() -> str:
    # Pinned here, not only in conftest: serve_broken is built on asyncio's stream server.
    return "asyncio"


@pytest.fixture(params=["in-process", "loopback"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """Open a client on an app, in-process or through uvicorn on a loopback socket."""
    async with contextlib.AsyncExitStack() as stack:

        async def _connect(app: Starlette) -> httpx.AsyncClient:
            if request.param == "loopback":
                server = stack.enter_context(LiveServer(app))
                client = httpx.AsyncClient(base_url=server.url, trust_env=False)
            else:
                transport = httpx.ASGITransport(app)
                client = httpx.AsyncClient(transport=transport, base_url="http://sim")
            return await stack.enter_async_context(client)

        yield _connect


@contextlib.asynccontextmanager
async def live_client(app: Starlette, **config: Any) -> AsyncIterator[httpx.AsyncClient]:
    with LiveServer(app, **config) as server:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
            yield client


def load_case(case_id: str) -> dict[str, Any]:
    path = CORPUS / "cases" / (case_id.replace("/", "__") + ".json")
    case: dict[str, Any] = json.loads(path.read_text())
    return case


def body_of(response: httpx.Response) -> Any:
    return json.loads(response.text)  # the stdlib reads bare NaN, as MLflow clients do


# --- the toy model ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        pytest.param([[1, 2.5], [3, 4]], [3.5, 7.0], id="list-rows"),
        pytest.param([{"a": 1, "b": 2}], [3.0], id="record-rows"),
        pytest.param([[1, "x", True, 2]], [3.0], id="strings-and-bools-ignored"),
        pytest.param([[[1, 2], [3, [4]]]], [10.0], id="tensor-flattened"),
        pytest.param([{"a": [1, 2], "b": {"c": 3}}], [6.0], id="nested-objects"),
        pytest.param([[], ["only text"]], [0.0, 0.0], id="no-numbers"),
        pytest.param([5, 2.5], [5.0, 2.5], id="scalar-instances"),
        pytest.param([], [], id="no-rows"),
    ],
)
def test_predict_sums_each_row(rows: list[Any], expected: list[float]) -> None:
    result = predict(rows)
    assert result == expected
    assert all(type(value) is float for value in result)


@pytest.mark.parametrize(
    "row",
    [
        pytest.param([1, None], id="null"),
        pytest.param([1, math.nan], id="nan"),
        pytest.param([math.inf, -math.inf], id="inf-minus-inf"),
    ],
)
def test_predict_propagates_nan(row: list[Any]) -> None:
    assert math.isnan(predict([row])[0])


# --- the two protocols -----------------------------------------------------------------------

SPLIT = {"columns": ["a", "b", "c"], "data": [[1, 2, 3], [4.5, None, 1]]}
RECORDS = [{"a": 1, "b": 2, "c": 3}, {"a": 4.5, "b": None, "c": 1}]
CSV = "a,b,c\n1,2,3\n4.5,,1\n"
EXPECTED = [6.0, math.nan]


def assert_predictions(actual: Any, expected: list[float]) -> None:
    assert isinstance(actual, list)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got == want or (math.isnan(got) and math.isnan(want))


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
    sides: tuple[tuple[Kind, tuple[str, Any]], ...] = (
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
async def test_auxiliary_endpoints(connect: Connect, kind: Kind, path: str, body: bytes) -> None:
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
    connect: Connect, kind: Kind, allow: str, media_type: str
) -> None:
    client = await connect(create_simulator_app(kind))
    response = await client.get("/invocations")
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.headers["content-type"].startswith(media_type)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        create_simulator_app("mlflow3")  # type: ignore[arg-type]


# --- corpus replay ---------------------------------------------------------------------------


def replay_params() -> list[Any]:
    params = []
    for path in CASES:
        case = json.loads(path.read_text())
        for kind, side in (("legacy", "legacy"), ("serverless", "v2")):
            if side in case:
                params.append(pytest.param(kind, case, side, id=f"{kind}:{case['id']}"))
    return params


@needs_corpus
@pytest.mark.parametrize(("kind", "case", "side"), replay_params())
async def test_replays_every_recorded_answer_verbatim(
    kind: Kind, case: dict[str, Any], side: str
) -> None:
    app = create_simulator_app(kind, corpus=CORPUS)
    request, recorded = case[side]["request"], case[side]["response"]
    path = request["path"]
    if path == "/invocations":
        # the model's name in the path picks between cases recorded with the same request
        model = case["model"]
        path = f"/model/{model}/1/invocations" if kind == "legacy" else f"/m/{model}/invocations"
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        response = await client.request(
            request["method"], path, headers=request["headers"], content=request["body"].encode()
        )
    assert response.status_code == recorded["status"]
    assert response.content == recorded["body"].encode()
    for name, value in recorded["headers"].items():
        assert response.headers[name] == value


@needs_corpus
async def test_replay_matches_parsed_json_not_bytes(connect: Connect) -> None:
    client = await connect(create_simulator_app("serverless", corpus=CORPUS))
    case = load_case("iris/pandas-split")["v2"]
    sent = json.loads(case["request"]["body"])
    split = sent["dataframe_split"]
    reordered = {"dataframe_split": {"data": split["data"], "columns": split["columns"]}}
    response = await client.post(
        "/serving-endpoints/iris/invocations",
        content=json.dumps(reordered, separators=(",", ":")).encode(),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.content == case["response"]["body"].encode()


def write_case(corpus: Path, side: str, request_body: str, response_body: str) -> None:
    cases = corpus / "cases"
    cases.mkdir(exist_ok=True)
    recorded = {
        "request": {
            "method": "POST",
            "path": "/invocations",
            "headers": {"content-type": "application/json"},
            "body": request_body,
        },
        "response": {
            "status": 200,
            "headers": {"content-type": "application/json"},
            "body": response_body,
        },
    }
    case = {"id": f"toy/{side}", "model": "toy", side: recorded}
    (cases / f"toy__{side}.json").write_text(json.dumps(case))


async def test_replay_nan_equals_nan(tmp_path: Path) -> None:
    write_case(tmp_path, "v2", '{"inputs": [[1, NaN]]}', '{"predictions": ["recorded"]}')
    app = create_simulator_app("serverless", corpus=tmp_path)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        headers = {"content-type": "application/json"}
        nan = await client.post("/invocations", content=b'{"inputs":[[1,NaN]]}', headers=headers)
        null = await client.post("/invocations", content=b'{"inputs":[[1,null]]}', headers=headers)
    assert nan.text == '{"predictions": ["recorded"]}'
    assert null.text == '{"predictions": [NaN]}'  # null is not NaN: the toy model answers


@needs_corpus
async def test_replay_prefers_the_model_named_in_the_path(connect: Connect) -> None:
    client = await connect(create_simulator_app("serverless", corpus=CORPUS))
    request = load_case("iris/pandas-split")["v2"]["request"]
    answers = {}
    for model in ("iris", "frame"):
        response = await client.post(
            f"/serving-endpoints/{model}/invocations",
            content=request["body"].encode(),
            headers=request["headers"],
        )
        answers[model] = response.text
    assert answers["iris"] == load_case("iris/pandas-split")["v2"]["response"]["body"]
    assert answers["frame"] == load_case("frame/pandas-split")["v2"]["response"]["body"]


@needs_corpus
async def test_replay_falls_back_to_the_toy_model(connect: Connect) -> None:
    client = await connect(create_simulator_app("legacy", corpus=CORPUS))
    response = await client.post("/invocations", json=[{"x": 40, "y": 2}])
    assert response.text == "[42.0]"


@needs_corpus
async def test_replay_keeps_recorded_error_headers(connect: Connect) -> None:
    client = await connect(create_simulator_app("legacy", corpus=CORPUS))
    case = load_case("iris/charset-latin1")["legacy"]
    response = await client.post(
        "/model/iris/1/invocations",
        content=case["request"]["body"].encode(),
        headers=case["request"]["headers"],
    )
    assert response.status_code == 415
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == case["response"]["body"]


async def test_replay_tries_v3_when_v2_has_no_match(tmp_path: Path) -> None:
    write_case(tmp_path, "v3", '{"inputs": [[1, 2]]}', '{"predictions": ["from v3"]}')
    app = create_simulator_app("serverless", corpus=tmp_path)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        response = await client.post("/invocations", json={"inputs": [[1, 2]]})
    assert response.json() == {"predictions": ["from v3"]}


def test_corpus_without_cases_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cases"):
        create_simulator_app("legacy", corpus=tmp_path)


# --- fault knobs -----------------------------------------------------------------------------


async def put_faults(client: httpx.AsyncClient, **faults: Any) -> httpx.Response:
    return await client.put("/_sim/faults", json=faults)


async def test_faults_read_and_replace(connect: Connect) -> None:
    client = await connect(create_simulator_app("serverless", faults=Faults(delay_ms=1)))
    assert (await client.get("/_sim/faults")).json() == {
        "delay_ms": 1.0,
        "jitter_ms": 0.0,
        "status": None,
        "fail_rate": 0.0,
        "malformed": False,
        "drop": False,
    }
    response = await put_faults(client, status=503, fail_rate=0.25)
    assert response.status_code == 200
    current = (await client.get("/_sim/faults")).json()
    # PUT replaces the whole set: the delay not named went back to its default
    assert (current["status"], current["fail_rate"], current["delay_ms"]) == (503, 0.25, 0.0)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param({"delay": 5}, "unknown fields: delay", id="unknown-field"),
        pytest.param({"delay_ms": "5"}, "delay_ms must be a number", id="string-number"),
        pytest.param({"drop": 1}, "drop must be true or false", id="int-bool"),
        pytest.param({"status": True}, "status must be an integer", id="bool-status"),
        pytest.param({"status": 42}, "status must be an HTTP status", id="status-range"),
        pytest.param({"fail_rate": 1.5}, "fail_rate must be between 0 and 1", id="rate-range"),
        pytest.param({"jitter_ms": -1}, "jitter_ms must be", id="negative-jitter"),
        pytest.param([1], "must be a JSON object", id="not-an-object"),
    ],
)
async def test_invalid_faults_are_refused_and_change_nothing(
    connect: Connect, body: Any, fragment: str
) -> None:
    client = await connect(create_simulator_app("serverless", faults=Faults(status=418)))
    response = await client.put("/_sim/faults", json=body)
    assert response.status_code == 400
    assert fragment in response.json()["message"]
    assert (await client.get("/_sim/faults")).json()["status"] == 418


async def test_invalid_faults_json_is_refused(connect: Connect) -> None:
    client = await connect(create_simulator_app("serverless"))
    response = await client.put("/_sim/faults", content=b"{nope")
    assert response.status_code == 400


@pytest.mark.parametrize("kind", ["legacy", "serverless"])
@pytest.mark.parametrize(
    ("status", "error_code"),
    [
        (503, "TEMPORARILY_UNAVAILABLE"),
        (429, "REQUEST_LIMIT_EXCEEDED"),
        (502, "INTERNAL_ERROR"),
        (418, "BAD_REQUEST"),
    ],
)
async def test_status_fault_answers_every_request(
    connect: Connect, kind: Kind, status: int, error_code: str
) -> None:
    client = await connect(create_simulator_app(kind, faults=Faults(status=status)))
    for path in ("/invocations", "/ping"):
        response = await client.post(path, json={"inputs": [[1]]})
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error_code"] == error_code


async def test_fail_rate_one_fails_everything(connect: Connect) -> None:
    client = await connect(create_simulator_app("serverless"))
    await put_faults(client, fail_rate=1.0)
    statuses = {
        (await client.post("/invocations", json={"inputs": [1]})).status_code for _ in range(5)
    }
    assert statuses == {500}


async def fail_pattern(seed: int, count: int = 40) -> list[int]:
    app = create_simulator_app("serverless", faults=Faults(fail_rate=0.5), seed=seed)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        return [
            (await client.post("/invocations", json={"inputs": [1]})).status_code
            for _ in range(count)
        ]


async def test_fail_rate_is_seeded() -> None:
    first, again, other = await fail_pattern(7), await fail_pattern(7), await fail_pattern(8)
    assert first == again
    assert first != other
    assert set(first) == {200, 500}


async def test_jitter_is_seeded_and_bounded() -> None:
    async def delays(seed: int) -> list[float]:
        faults = Faults(delay_ms=1.0, jitter_ms=2.0)
        app = create_simulator_app("serverless", faults=faults, seed=seed)
        transport = httpx.ASGITransport(app)
        drawn = []
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            for _ in range(5):
                await client.post("/invocations", json={"inputs": [1]})
                stats = (await client.get("/_sim/stats")).json()
                drawn.append(stats["last_request"]["delay_ms"])
        return drawn

    first, again, other = await delays(3), await delays(3), await delays(4)
    assert first == again
    assert first != other
    assert all(1.0 <= delay <= 3.0 for delay in first)
    assert len(set(first)) == len(first)


async def test_delay_holds_the_answer_back() -> None:
    app = create_simulator_app("serverless", faults=Faults(delay_ms=1_000))
    with LiveServer(app) as server:
        timeout = httpx.Timeout(5.0, read=0.05)
        async with httpx.AsyncClient(base_url=server.url, timeout=timeout, trust_env=False) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.post("/invocations", json={"inputs": [1]})
            await put_faults(c, delay_ms=0)
            assert (await c.post("/invocations", json={"inputs": [1]})).status_code == 200


async def test_malformed_answers_200_with_a_body_that_is_not_json(connect: Connect) -> None:
    client = await connect(create_simulator_app("serverless", faults=Faults(malformed=True)))
    response = await client.post("/invocations", json={"inputs": [1]})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(ValueError, match="Expecting value"):
        json.loads(response.text)


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_drop_closes_the_connection_without_a_response(http: str) -> None:
    app = create_simulator_app("serverless", faults=Faults(drop=True))
    async with live_client(app, http=http) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await client.post("/invocations", json={"inputs": [1]})
        # the control plane still answers, and the dropped request was counted
        assert (await client.get("/_sim/stats")).json()["total"] == 1
        await put_faults(client, drop=False)
        response = await client.post("/invocations", json={"inputs": [1]})
        assert response.json() == {"predictions": [1.0]}


async def test_faults_do_not_touch_the_control_plane(connect: Connect) -> None:
    client = await connect(create_simulator_app("serverless", faults=Faults(status=500)))
    assert (await client.get("/_sim/faults")).status_code == 200
    assert (await client.get("/_sim/stats")).status_code == 200


# --- broken servers --------------------------------------------------------------------------


async def test_broken_reset_resets_the_connection() -> None:
    async with serve_broken("reset") as url, httpx.AsyncClient(trust_env=False) as client:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await client.post(url + "/invocations", json={"inputs": [1]})


async def test_broken_reset_is_a_tcp_reset() -> None:
    # Seen from a raw socket, the reset is an RST (ECONNRESET), not an orderly close (b"").
    async with serve_broken("reset") as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"POST /invocations HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            with pytest.raises(ConnectionResetError):
                await reader.read(1)
        finally:
            writer.transport.abort()


async def test_broken_hang_never_answers() -> None:
    timeout = httpx.Timeout(5.0, read=0.05)
    async with (
        serve_broken("hang") as url,
        httpx.AsyncClient(timeout=timeout, trust_env=False) as client,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await client.post(url + "/invocations", json={"inputs": [1]})


async def test_broken_garbage_is_not_http() -> None:
    async with serve_broken("garbage") as url, httpx.AsyncClient(trust_env=False) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(url + "/invocations", json={"inputs": [1]})


async def test_broken_server_refuses_unknown_modes_and_hosts() -> None:
    with pytest.raises(ValueError, match="mode"):
        async with serve_broken("slow"):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="loopback"):
        async with serve_broken("hang", host="0.0.0.0"):
            pass


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
    }


async def test_unknown_control_paths_are_404_and_not_counted(connect: Connect) -> None:
    client = await connect(create_simulator_app("legacy"))
    assert (await client.get("/_sim/nothing")).status_code == 404
    assert (await client.get("/_sim/stats")).json()["total"] == 0


def test_app_state_exposes_the_simulator() -> None:
    app = create_simulator_app("legacy")
    app.state.simulator.faults = Faults(status=503)
    assert app.state.simulator.faults.status == 503


# --- command line ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_simulate_arguments_defaults() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_simulate_arguments(parser)
    args = parser.parse_args([])
    assert (args.kind, args.host, args.port, args.corpus, args.seed) == (
        "serverless",
        "127.0.0.1",
        None,
        None,
        0,
    )
    args = parser.parse_args(["--kind", "legacy", "--delay-ms", "5", "--fail-rate", "0.1"])
    assert (args.kind, args.delay_ms, args.fail_rate) == ("legacy", 5.0, 0.1)


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--host", "0.0.0.0"], "loopback only"), (["--fail-rate", "3"], "fail_rate")],
)
def test_simulate_refuses_bad_flags(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy.simulator", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr


@needs_corpus
def test_simulate_command_serves_until_terminated() -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "proxy.simulator",
        "--kind",
        "legacy",
        "--port",
        str(port),
        "--corpus",
        str(CORPUS),
    ]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
            while True:
                assert process.poll() is None, "the simulator exited early"
                try:
                    response = client.get("/version")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the simulator did not start"
                    time.sleep(0.05)
            assert response.text == "1.30.1"
            case = load_case("iris/pandas-split")["legacy"]
            answer = client.post(
                "/model/iris/1/invocations",
                content=case["request"]["body"].encode(),
                headers=case["request"]["headers"],
            )
            assert answer.text == case["response"]["body"]
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal it captured (Server.capture_signals)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
