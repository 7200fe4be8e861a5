"""The real `serving-proxy serve` process on loopback, in front of corpus-replaying simulators.

Source of truth for behaviour (architecture §3): the CLI, uvicorn with uvloop and
httptools, aiohttp to real sockets. Every corpus legacy request must come back as the
1.x server answered it; SIGTERM must let requests in flight finish; random input must
never crash the proxy or earn a 500 it should not give.
"""

from __future__ import annotations

import signal
import string
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import errors
from sim.app import create_simulator_app
from sim.corpus import Case, load_cases
from sim.equality import assert_legacy_equivalent
from tests.conftest import CORPUS
from tests.integration.proxy_process import ProxyProcess
from tests.servers import LiveServer
from tests.strategies import JSON_BODIES, SPLIT_FRAME_BODIES

pytestmark = pytest.mark.integration

MODELS = ("iris", "diabetes", "frame", "tensor")
LEGACY_CASES = [c for c in load_cases() if c.legacy is not None]


@pytest.fixture(scope="module")
def serverless() -> Iterator[LiveServer]:
    with LiveServer(create_simulator_app("serverless", corpus=CORPUS)) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(
    serverless: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    # The model's name in the upstream path lets the replay tell iris from frame: both
    # models were recorded with the same inputs.
    config = {
        "backends": {
            "serverless": {
                "url": serverless.url,
                "path": "/model-endpoint/{name}/{version}/invocations",
            }
        },
        "models": {name: {"stages": {"Production": "1"}} for name in MODELS},
        "limits": {"max_body_bytes": 1_000_000},
    }
    with ProxyProcess(config, tmp_path_factory.mktemp("proxy")) as process:
        yield process


def legacy_url(case: Case) -> str:
    """The Databricks legacy URL of a recorded 1.x scoring-server request (corpus README)."""
    assert case.legacy is not None
    path = case.legacy.request.path
    if path == "/invocations":
        return f"/model/{case.model}/Production/invocations"
    return path


@pytest.mark.parametrize("case", LEGACY_CASES, ids=[c.id for c in LEGACY_CASES])
def test_corpus_legacy_request_gets_the_legacy_answer(proxy: ProxyProcess, case: Case) -> None:
    assert case.legacy is not None
    request = case.legacy.request
    r = httpx.request(
        request.method,
        proxy.url + legacy_url(case),
        content=request.body_bytes if request.method == "POST" else None,
        headers=dict(request.headers),
    )
    assert_legacy_equivalent(
        r.status_code, r.headers.get("content-type"), r.content, case.legacy.response
    )
    if request.method == "GET" and r.status_code == 200:
        # §1.3: the auxiliary endpoints are answered locally with 1.30.1's exact bytes.
        assert r.content == case.legacy.response.body_bytes
    if "allow" in case.legacy.response.headers:
        expected = set(case.legacy.response.headers["allow"].split(", "))
        assert set(r.headers["allow"].split(", ")) == expected


def test_sigterm_finishes_requests_in_flight(serverless: LiveServer, tmp_path: Path) -> None:
    httpx.post(serverless.url + "/_sim/reset").raise_for_status()
    httpx.put(serverless.url + "/_sim/faults", json={"delay_ms": 1500}).raise_for_status()
    config = {
        "backends": {"serverless": {"url": serverless.url, "path": "/invocations"}},
        "models": {"iris": {}},
    }
    result: dict[str, Any] = {}
    try:
        with ProxyProcess(config, tmp_path) as process:

            def call() -> None:
                result["response"] = httpx.post(
                    process.url + "/model/iris/1/invocations",
                    content=b'{"inputs": [[1, 2]]}',
                    headers={"content-type": "application/json"},
                    timeout=10,
                )

            caller = threading.Thread(target=call)
            caller.start()
            deadline = time.monotonic() + 5
            while httpx.get(serverless.url + "/_sim/stats").json()["total"] == 0:
                assert time.monotonic() < deadline, "the request never reached the upstream"
                time.sleep(0.02)
            process.terminate()
            caller.join(10)
            code = process.wait(10)
            log = process.log()
    finally:
        httpx.put(serverless.url + "/_sim/faults", json={}).raise_for_status()
    assert result["response"].status_code == 200
    assert result["response"].content == b"[3.0]"
    # uvicorn re-raises the signal once it has drained (uvicorn/server.py capture_signals),
    # so a supervisor sees "terminated by SIGTERM" (exit 143 in a container), not a crash.
    assert code == -signal.SIGTERM
    assert "Finished server process" in log


def test_bad_config_stops_start_up_naming_key_and_file(tmp_path: Path) -> None:
    process = ProxyProcess(
        {
            "backends": {"serverless": {"url": "http://127.0.0.1:1"}},
            "models": {"iris": {"rute": 1}},
        },
        tmp_path,
    )
    with pytest.raises(RuntimeError) as info:
        process.start()
    assert str(process.config_path) in str(info.value)
    assert "models.iris.rute: unknown key" in str(info.value)


# --- fuzzing ----------------------------------------------------------------------------------

CONTENT_TYPES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; format=pandas-split",
            "application/json; format=pandas-records",
            "application/json-numpy-split",
            "text/csv",
            "text/plain",
            "application/json; charset=latin-1",
            "",
        ]
    ),
    # Header values an HTTP client can send: visible ASCII and spaces.
    st.text(
        alphabet=string.ascii_letters + string.digits + string.punctuation + " ", max_size=40
    ).map(str.strip),
)
BODIES = st.one_of(
    st.binary(max_size=200),
    JSON_BODIES,
    SPLIT_FRAME_BODIES,
)
PATH_SEGMENT = st.text(
    alphabet=string.ascii_letters + string.digits + "-_.%", min_size=1, max_size=12
)
PATHS = st.one_of(
    st.builds(
        lambda m, v: f"/model/{m}/{v}/invocations", st.sampled_from([*MODELS, "x"]), PATH_SEGMENT
    ),
    st.builds(lambda s: f"/{s}", PATH_SEGMENT),
    st.builds(lambda s: f"/serving-endpoints/{s}/invocations", PATH_SEGMENT),
    st.just("/model/iris/Production/invocations"),
)


def legacy_shaped(r: httpx.Response) -> bool:
    """A reply a 1.x client can read: JSON error/success, 415 text, or a Werkzeug page."""
    media = r.headers.get("content-type", "").split(";")[0]
    if media == "application/json":
        return True
    if media == "text/plain":
        return r.status_code == 415
    return media == "text/html" and r.status_code in (404, 405, 500)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
    path=PATHS,
    content_type=CONTENT_TYPES,
    body=BODIES,
)
def test_fuzz_never_crashes_and_answers_in_legacy_shape(
    proxy: ProxyProcess, method: str, path: str, content_type: str | None, body: bytes
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    r = httpx.request(method, proxy.url + path, content=body, headers=headers)
    assert legacy_shaped(r), (r.status_code, r.headers.get("content-type"), r.text[:200])
    if r.status_code == 500:
        # Only 1.30.1's own 500 (§2.1 E11: no Content-Type, or a body that is not UTF-8).
        assert r.text == errors.E11_PAGE
    ok = httpx.post(
        proxy.url + "/model/iris/Production/invocations",
        content=b'{"columns": ["sepal_length", "sepal_width", "petal_length", "petal_width"], '
        b'"data": [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]}',
        headers={"content-type": "application/json; format=pandas-split"},
    )
    assert (ok.status_code, ok.content) == (200, b"[0, 1, 2]")
