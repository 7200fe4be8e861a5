"""Corpus replay: recorded answers found by what a request means, not by its bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from sim.app import create_simulator_app
from sim.corpus import Case, load_cases
from sim.dialect import SimulatorKind
from tests.sim.support import (
    CORPUS,
    Connect,
    needs_corpus,
    recorded_side,
)

pytestmark = pytest.mark.anyio


def replay_params() -> list[Any]:
    params = []
    cases = load_cases(CORPUS) if (CORPUS / "cases").is_dir() else ()
    for case in cases:
        for kind, side in (("legacy", "legacy"), ("serverless", "v2")):
            if case.side(side) is not None:
                params.append(pytest.param(kind, case, side, id=f"{kind}:{case.id}"))
    return params


@needs_corpus
@pytest.mark.parametrize(("kind", "case", "side"), replay_params())
async def test_replays_every_recorded_answer_verbatim(
    kind: SimulatorKind, case: Case, side: str
) -> None:
    app = create_simulator_app(kind, corpus=CORPUS)
    chosen = case.side(side)
    assert chosen is not None
    request, recorded = chosen.request, chosen.response
    path = request.path
    if path == "/invocations":
        # the model's name in the path picks between cases recorded with the same request
        model = case.model
        path = f"/model/{model}/1/invocations" if kind == "legacy" else f"/m/{model}/invocations"
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        response = await client.request(
            request.method, path, headers=dict(request.headers), content=request.body_bytes
        )
    assert response.status_code == recorded.status
    assert response.content == recorded.body_bytes
    for name, value in recorded.headers.items():
        assert response.headers[name] == value


@needs_corpus
async def test_replay_matches_parsed_json_not_bytes(connect: Connect) -> None:
    client = await connect(create_simulator_app("serverless", corpus=CORPUS))
    case = recorded_side("iris/pandas-split", "v2")
    sent = json.loads(case.request.body)
    split = sent["dataframe_split"]
    reordered = {"dataframe_split": {"data": split["data"], "columns": split["columns"]}}
    response = await client.post(
        "/serving-endpoints/iris/invocations",
        content=json.dumps(reordered, separators=(",", ":")).encode(),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert response.content == case.response.body_bytes


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
    request = recorded_side("iris/pandas-split", "v2").request
    answers = {}
    for model in ("iris", "frame"):
        response = await client.post(
            f"/serving-endpoints/{model}/invocations",
            content=request.body_bytes,
            headers=dict(request.headers),
        )
        answers[model] = response.text
    assert answers["iris"] == recorded_side("iris/pandas-split", "v2").response.body
    assert answers["frame"] == recorded_side("frame/pandas-split", "v2").response.body


@needs_corpus
async def test_replay_falls_back_to_the_toy_model(connect: Connect) -> None:
    client = await connect(create_simulator_app("legacy", corpus=CORPUS))
    response = await client.post("/invocations", json=[{"x": 40, "y": 2}])
    assert response.text == "[42.0]"


@needs_corpus
async def test_replay_keeps_recorded_error_headers(connect: Connect) -> None:
    client = await connect(create_simulator_app("legacy", corpus=CORPUS))
    case = recorded_side("iris/charset-latin1", "legacy")
    response = await client.post(
        "/model/iris/1/invocations",
        content=case.request.body_bytes,
        headers=dict(case.request.headers),
    )
    assert response.status_code == 415
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == case.response.body


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
