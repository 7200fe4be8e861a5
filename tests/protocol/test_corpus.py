"""Conformance of the pure translation against every recorded corpus case (protocols.md §9).

For a legacy `POST /invocations`: either the proxy refuses it locally exactly as 1.30.1 did
before reaching the model, or it translates it into the recorded 2.x / 3.x request and maps
the recorded 2.x / 3.x reply back to the recorded 1.30.1 reply (corpus README rules). Which
of the two is decided from the recording, not from the code under test; every case is
accounted for below, none is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy import jsoncodec
from proxy.errors import (
    E1_MALFORMED_JSON,
    E2_NOT_LIST_OR_DICT,
    E3_PANDAS,
    E4_CSV,
    E5_NUMPY,
    E6A_SIGNATURE_NAME,
    E6B_KEYS,
    E6C_TF_PARSE,
    E6D_LENGTHS,
    MethodNotAllowed,
    NoRoute,
    ProxyError,
)
from proxy.models import LegacyFormat, Reply, V2Request
from proxy.protocol.legacy import parse_request
from proxy.protocol.translate import legacy_to_v2, v2_to_legacy
from sim.corpus import Case, Response, Side, load_cases
from sim.equality import assert_legacy_equivalent, json_equal, media_type

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
CASES = load_cases()

# Replies the handlers make locally (§1.3, §6.5); not translations, so not checked here
# beyond the errors.py pages (§8.10, §8.16).
LOCAL_GET_CASES = {
    "iris/ping": "§1.3: answered locally with 1.30.1's bytes",
    "iris/health": "§1.3: answered locally with 1.30.1's bytes",
    "iris/version": "§1.3, §8.10: no translation yields `1.30.1`; answered locally",
    "iris/get-invocations": "§6.5 method not allowed: E14 page, checked below",
    "iris/unknown-path": "§6.5 no route: E15 page, checked below",
}

# 1.30.1 refused these before the model, but the proxy cannot (or must not) refuse them
# itself: it forwards, and §6.4 reproduces status and error_code, not the message.
FORWARDED_DESPITE_EARLY_REJECTION = {
    "frame/instances": "§8.14: E6c came from the signature cast; the proxy has no signature (M1)",
    "iris/empty-body-csv": "§4.1 L-CSV: nothing is checked before forwarding CSV; M4 gives E4",
}

# Forwarded errors whose legacy message no translation can reproduce; status and error_code
# still match. Every other forwarded error must reproduce 1.30.1's message exactly.
MESSAGE_DIFFERS = {
    "frame/instances": "§8.14: 1.30.1 said E6c, the new side a schema error (M1)",
    "tensor/inputs-ragged": "§8.15: 1.30.1 said E8 from the model, the new side a parse error (M5)",
}

# Their v2/v3 side is the raw legacy request (corpus README), not a translation: the
# translated body must instead equal the recorded request of another case, same model.
RAW_CASES = {
    "iris/legacy-default-raw",
    "iris/legacy-list-raw",
    "iris/legacy-records-raw",
    "iris/legacy-split-raw",
}

# The 1.30.1 texts of every error it raised before calling the model (§6.1 E1–E6).
_EARLY_MESSAGES = (
    E1_MALFORMED_JSON,
    E2_NOT_LIST_OR_DICT,
    E3_PANDAS.format(orient="split"),
    E3_PANDAS.format(orient="records"),
    E4_CSV,
    E5_NUMPY,
    E6A_SIGNATURE_NAME,
    E6B_KEYS,
    E6C_TF_PARSE,
    E6D_LENGTHS,
)


def _rejected_before_model(response: Response) -> bool:
    """From the recording alone: 415, the no-Content-Type 500, or an E1–E6 message."""
    if response.status in (415, 500):
        return True
    if response.status != 400:
        return False
    return jsoncodec.loads(response.body)["message"] in _EARLY_MESSAGES


def _legacy(case: Case) -> Side:
    assert case.legacy is not None
    return case.legacy


POST_CASES = [
    case
    for case in CASES
    if case.legacy is not None and case.legacy.request.method == "POST" and case.new_sides()
]
V2_ONLY_CASES = [case for case in CASES if case.legacy is None]
LOCAL_POST_CASES = [
    case
    for case in POST_CASES
    if _rejected_before_model(_legacy(case).response)
    and case.id not in FORWARDED_DESPITE_EARLY_REJECTION
]
FORWARDED_CASES = [case for case in POST_CASES if case not in LOCAL_POST_CASES]
FORWARDED_SIDES = [
    (case, name, side) for case in FORWARDED_CASES for name, side in case.new_sides()
]


def _canonical(body: str | bytes) -> str:
    return json.dumps(jsoncodec.loads(body), sort_keys=True)


Key = tuple[str, str, str | None, str]


def _recorded_json_requests() -> dict[Key, list[Side]]:
    """Recorded 2.x / 3.x JSON requests by (model, side, exact Content-Type, canonical JSON).

    The Content-Type is part of the key, as in the README's replay rule: the same body sent
    with `charset=latin-1` got a 415 (iris/charset-latin1).
    """
    index: dict[Key, list[Side]] = {}
    for case in CASES:
        for name, side in case.new_sides():
            try:
                canonical = _canonical(side.request.body)
            except ValueError:
                continue
            key = (case.model, name, side.request.content_type, canonical)
            index.setdefault(key, []).append(side)
    return index


RECORDED_REQUESTS = _recorded_json_requests()


def _key(case: Case, name: str, out: V2Request) -> Key:
    return (case.model, name, out.content_type, _canonical(out.body))


def _translate(case: Case) -> V2Request:
    request = _legacy(case).request
    return legacy_to_v2(parse_request(request.content_type, request.body_bytes))


def _reply(response: Response) -> Reply:
    try:
        return v2_to_legacy(response.status, response.content_type or "", response.body_bytes)
    except ProxyError as err:
        return err.to_reply()


def _ids(cases: list[Case]) -> list[str]:
    return [case.id for case in cases]


def test_corpus_is_where_the_docs_say() -> None:
    assert CORPUS.is_dir()
    assert len(CASES) == 69


def test_every_case_is_accounted_for() -> None:
    groups = [
        {case.id for case in LOCAL_POST_CASES},
        {case.id for case in FORWARDED_CASES},
        set(LOCAL_GET_CASES),
        {case.id for case in V2_ONLY_CASES},
    ]
    assert sum(len(group) for group in groups) == len(CASES)
    assert set().union(*groups) == {case.id for case in CASES}
    assert set(FORWARDED_DESPITE_EARLY_REJECTION) <= groups[1]
    assert set(MESSAGE_DIFFERS) <= groups[1]
    assert groups[1] >= RAW_CASES


@pytest.mark.parametrize("case", LOCAL_POST_CASES, ids=_ids(LOCAL_POST_CASES))
def test_local_reply_matches_legacy(case: Case) -> None:
    request, recorded = _legacy(case).request, _legacy(case).response
    with pytest.raises(ProxyError) as info:
        parse_request(request.content_type, request.body_bytes)
    reply = info.value.to_reply()
    assert_legacy_equivalent(reply.status, reply.content_type, reply.body, recorded)
    assert reply.content_type == recorded.content_type
    if media_type(recorded.content_type) == "application/json":
        # The proxy reproduces 1.30.1's message exactly; only the traceback differs (§8.2).
        expected, actual = jsoncodec.loads(recorded.body), jsoncodec.loads(reply.body)
        assert actual["message"] == expected["message"]
        assert list(actual) == list(expected)
    else:
        assert reply.body == recorded.body_bytes


@pytest.mark.parametrize("case", FORWARDED_CASES, ids=_ids(FORWARDED_CASES))
def test_forwarded_cases_pass_validation(case: Case) -> None:
    request = _legacy(case).request
    req = parse_request(request.content_type, request.body_bytes)
    assert req.format is not LegacyFormat.V2


@pytest.mark.parametrize(
    ("case", "name", "side"),
    FORWARDED_SIDES,
    ids=[f"{case.id}-{name}" for case, name, _ in FORWARDED_SIDES],
)
def test_translated_request_matches_recording(case: Case, name: str, side: Side) -> None:
    out = _translate(case)
    if case.id in RAW_CASES:
        # The recording sent the legacy body as is and failed; the translation is the body
        # another case of this model sent with the same data.
        assert not json_equal(jsoncodec.loads(out.body), jsoncodec.loads(side.request.body))
        assert _key(case, name, out) in RECORDED_REQUESTS
        return
    assert media_type(out.content_type) == media_type(side.request.content_type)
    if out.content_type == "text/csv":
        assert out.body == side.request.body_bytes
    else:
        assert json_equal(jsoncodec.loads(out.body), jsoncodec.loads(side.request.body), rel=0.0)


@pytest.mark.parametrize(
    ("case", "name", "side"),
    FORWARDED_SIDES,
    ids=[f"{case.id}-{name}" for case, name, _ in FORWARDED_SIDES],
)
def test_translated_reply_matches_legacy(case: Case, name: str, side: Side) -> None:
    responses = [side.response]
    if case.id in RAW_CASES:
        # Every recording of the translated request must map back to the legacy reply.
        responses = [
            match.response for match in RECORDED_REQUESTS[_key(case, name, _translate(case))]
        ]
    recorded = _legacy(case).response
    for response in responses:
        reply = _reply(response)
        assert_legacy_equivalent(reply.status, reply.content_type, reply.body, recorded)
        assert reply.content_type == recorded.content_type
        if recorded.status != 200:
            message = jsoncodec.loads(recorded.body)["message"]
            same = jsoncodec.loads(reply.body)["message"] == message
            # Strict both ways, like xfail_strict: a listed case that starts to match is news.
            assert same is (case.id not in MESSAGE_DIFFERS), MESSAGE_DIFFERS.get(case.id)


@pytest.mark.parametrize("case", V2_ONLY_CASES, ids=_ids(V2_ONLY_CASES))
def test_v2_only_cases_forward_unchanged_when_accepted(case: Case) -> None:
    """§4.1: a new-protocol body (here with `params`) passes only with `accept_v2_bodies`."""
    for _, side in case.new_sides():
        request = side.request
        with pytest.raises(ProxyError) as info:
            parse_request(request.content_type, request.body_bytes)
        assert info.value.to_reply().status == 400
        req = parse_request(request.content_type, request.body_bytes, accept_v2_bodies=True)
        assert req.format is LegacyFormat.V2
        assert legacy_to_v2(req).body == request.body_bytes
        reply = _reply(side.response)
        if side.response.status == 200:
            predictions = jsoncodec.loads(side.response.body)["predictions"]
            assert reply.body == json.dumps(predictions).encode()
        else:
            assert (reply.status, jsoncodec.loads(reply.body)["error_code"]) == (400, "BAD_REQUEST")


@pytest.mark.parametrize("case_id", ["iris/v2-split-raw", "iris/v2-records-raw"])
def test_v2_envelopes_forward_unchanged_when_accepted(case_id: str) -> None:
    (case,) = [case for case in CASES if case.id == case_id]
    for _, side in case.new_sides():
        request = side.request
        req = parse_request(request.content_type, request.body_bytes, accept_v2_bodies=True)
        assert legacy_to_v2(req).body == request.body_bytes
        assert _reply(side.response).body == b"[0, 1, 2]"


@pytest.mark.parametrize(
    ("case_id", "error"),
    [
        pytest.param("iris/get-invocations", MethodNotAllowed(), id="E14"),
        pytest.param("iris/unknown-path", NoRoute(), id="E15"),
    ],
)
def test_local_pages_are_the_recorded_bytes(case_id: str, error: ProxyError) -> None:
    (case,) = [case for case in CASES if case.id == case_id]
    recorded = _legacy(case).response
    reply = error.to_reply()
    assert (reply.status, reply.content_type, reply.body) == (
        recorded.status,
        recorded.content_type,
        recorded.body_bytes,
    )
    for name, value in reply.headers:
        assert recorded.headers[name] == value
