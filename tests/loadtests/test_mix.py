"""Payload files: the format, the ready-made samples built from the corpus, the weighted pick."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import httpx
import pytest

from loadtests import mix
from sim.app import create_simulator_app
from tests.conftest import CORPUS

SAMPLES = sorted(mix.SAMPLES_DIR.glob("*.jsonl"))


def write_lines(path: Path, *lines: object) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


@pytest.mark.skipif(not CORPUS.is_dir(), reason="needs ../shared/corpus")
def test_the_ready_made_samples_are_exactly_what_the_corpus_builds() -> None:
    built = mix.render_samples(mix.build_samples(CORPUS))
    assert sorted(built) == [path.name for path in SAMPLES]
    for path in SAMPLES:
        assert path.read_text(encoding="utf-8") == built[path.name], (
            f"{path} is stale: run `python -m loadtests samples`"
        )


@pytest.mark.skipif(not CORPUS.is_dir(), reason="needs ../shared/corpus")
def test_samples_keep_the_recorded_bodies_byte_for_byte() -> None:
    case = json.loads((CORPUS / "cases" / "iris__pandas-split.json").read_text())
    by_id = {p.id: p for p in mix.load(mix.SAMPLES_DIR / "iris.jsonl", "legacy")}
    payload = by_id["iris/pandas-split"]
    assert payload.body == case["legacy"]["request"]["body"].encode()
    assert payload.content_type == case["legacy"]["request"]["headers"]["content-type"]


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_every_sample_has_both_sides_and_only_requests_both_servers_answered(path: Path) -> None:
    legacy = mix.load(path, "legacy")
    serverless = mix.load(path, "serverless")
    assert [p.id for p in legacy] == [p.id for p in serverless]
    assert len(legacy) >= 8
    assert not any(p.id.endswith(("-raw", "empty-body", "malformed-json")) for p in legacy)


@pytest.mark.anyio
@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
async def test_every_sample_payload_is_a_success_on_the_simulator_of_its_side(path: Path) -> None:
    for protocol, url in (
        ("legacy", "/invocations"),
        ("serverless", "/serving-endpoints/m/invocations"),
    ):
        app = create_simulator_app(protocol)  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
            for payload in mix.load(path, protocol):  # type: ignore[arg-type]
                headers = {"content-type": payload.content_type} if payload.content_type else {}
                response = await client.post(url, content=payload.body, headers=headers)
                assert response.status_code == 200, (protocol, payload.id, response.text)


def test_a_line_may_carry_one_side_and_runs_of_the_other_protocol_skip_it(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "mine.jsonl",
        {"id": "a", "legacy": {"content_type": "text/csv", "body": "x\n1\n"}},
        "",
        {"id": "b", "weight": 3, "legacy": {"content_type": None, "body": "{}"},
         "serverless": {"content_type": "application/json", "body": "{\"inputs\": [1]}"}},
    )  # fmt: skip
    assert [(p.id, p.weight) for p in mix.load(path, "legacy")] == [("a", 1.0), ("b", 3.0)]
    assert [p.id for p in mix.load(path, "serverless")] == ["b"]
    assert mix.load(path, "legacy")[1].content_type is None


def test_bodies_that_are_not_utf8_travel_as_base64(tmp_path: Path) -> None:
    raw = b"a,b\n\xff,1\n"
    line = {"id": "bin", "legacy": mix.encode_side("text/csv", raw)}
    assert "body_b64" in line["legacy"]
    path = write_lines(tmp_path / "bin.jsonl", line)
    assert mix.load(path, "legacy")[0].body == raw
    assert base64.b64decode(line["legacy"]["body_b64"]) == raw


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param("not json", "not JSON", id="not-json"),
        pytest.param("[1]", "must be a JSON object", id="not-object"),
        pytest.param({"id": "x"}, "needs a 'legacy' or 'serverless' side", id="no-side"),
        pytest.param({"id": "x", "weight": 0, "legacy": {"body": ""}}, "weight", id="zero-weight"),
        pytest.param(
            {"id": "x", "legacy": {"content_type": "a"}}, "body or body_b64", id="no-body"
        ),
        pytest.param({"id": "x", "legacy": {"body": 1}}, "body must be a string", id="body-int"),
        pytest.param({"id": "x", "legacy": {"body_b64": "%%"}}, "not base64", id="bad-b64"),
    ],
)
def test_a_bad_line_is_named_by_file_and_line_number(
    tmp_path: Path, line: object, message: str
) -> None:
    path = write_lines(tmp_path / "bad.jsonl", {"id": "ok", "legacy": {"body": "{}"}}, line)
    with pytest.raises(mix.PayloadError, match=message) as info:
        mix.load(path, "legacy")
    assert f"{path}:2" in str(info.value)


def test_a_file_without_the_wanted_side_is_refused(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "legacy-only.jsonl", {"id": "a", "legacy": {"body": "{}"}})
    with pytest.raises(mix.PayloadError, match="no payload has a 'serverless' side"):
        mix.load(path, "serverless")


def test_the_pick_follows_the_weights_over_any_stretch_and_repeats_exactly() -> None:
    payloads = [mix.Payload("a", None, b"", 1), mix.Payload("b", None, b"", 3)]
    chosen = mix.Mix(payloads)
    first = [chosen.pick(i).id for i in range(400)]
    assert first == [mix.Mix(payloads).pick(i).id for i in range(400)]
    for start in (0, 100, 250):
        counts = Counter(first[start : start + 100])
        assert 20 <= counts["a"] <= 30, counts  # 25 expected in every 100


def test_equal_weights_visit_every_payload_early() -> None:
    payloads = [mix.Payload(str(n), None, b"") for n in range(10)]
    assert {mix.Mix(payloads).pick(i).id for i in range(20)} == {str(n) for n in range(10)}


@pytest.mark.parametrize(
    ("path", "sample"),
    [
        ("/model/diabetes/1/invocations", "diabetes"),
        ("/model-endpoint/tensor/2/invocations", "tensor"),
        ("/serving-endpoints/frame/invocations", "frame"),
        ("/serving-endpoints/iris-prod/invocations", "iris"),
        ("/invocations", "iris"),
    ],
)
def test_default_sample_follows_the_model_in_the_path(path: str, sample: str) -> None:
    assert mix.default_sample(path) == mix.SAMPLES_DIR / f"{sample}.jsonl"


def test_sample_references_resolve_to_the_packaged_files() -> None:
    assert mix.resolve("sample:tensor") == mix.SAMPLES_DIR / "tensor.jsonl"
    assert mix.resolve("/tmp/x.jsonl") == Path("/tmp/x.jsonl")
