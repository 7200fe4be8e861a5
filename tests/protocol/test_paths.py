"""URL → configured model (protocols.md §1.2, §1.5): config decides, never the URL."""

from __future__ import annotations

import pytest

from proxy.config import parse_config
from proxy.errors import UnknownEndpoint, UnknownModel
from proxy.models import ModelRef
from proxy.protocol import paths
from proxy.protocol.paths import ScoringUrl, UrlKind, scoring_url

CONFIG = parse_config(
    {
        "backends": {"serverless": {"url": "http://127.0.0.1:1"}},
        "models": {
            "iris": {"stages": {"Production": "3", "Staging": "4"}},
            "pinned": {"versions": ["1", "2"], "stages": {"Production": "2"}, "endpoint": "pin-ep"},
        },
    },
    {},
)
MODELS = CONFIG.models


@pytest.mark.parametrize(
    ("name", "segment", "version"),
    [
        pytest.param("iris", "Production", "3", id="stage"),
        pytest.param("iris", "Staging", "4", id="other-stage"),
        pytest.param("iris", "7", "7", id="any-number"),
        pytest.param("pinned", "1", "1", id="listed-version"),
        pytest.param("pinned", "Production", "2", id="stage-of-listed"),
    ],
)
def test_resolve_legacy(name: str, segment: str, version: str) -> None:
    ref = paths.resolve_legacy(MODELS, name, segment)
    assert (ref.name, ref.requested, ref.version) == (name, segment, version)


@pytest.mark.parametrize(
    ("name", "segment"),
    [
        pytest.param("nope", "1", id="unknown-model"),
        pytest.param("iris", "production", id="stage-case-sensitive"),
        pytest.param("iris", "Archived", id="unconfigured-stage"),
        pytest.param("pinned", "3", id="unlisted-version"),
        pytest.param("iris", "1.0", id="not-a-number"),
        pytest.param("iris", "..", id="dot-dot"),
    ],
)
def test_unknown_is_404(name: str, segment: str) -> None:
    with pytest.raises(UnknownModel) as info:
        paths.resolve_legacy(MODELS, name, segment)
    assert info.value.to_reply().status == 404
    assert f"Model '{name}' version or stage '{segment}' is not served." in info.value.message


def test_serving_endpoint_by_endpoint_name() -> None:
    assert paths.resolve_serving_endpoint(MODELS, "pin-ep").name == "pinned"
    assert paths.resolve_serving_endpoint(MODELS, "pin-ep").version == "2"
    assert paths.resolve_serving_endpoint(MODELS, "iris").version == "3"
    with pytest.raises(UnknownEndpoint, match="Endpoint 'pinned' is not served"):
        paths.resolve_serving_endpoint(MODELS, "pinned")


def test_model_endpoint() -> None:
    assert paths.resolve_model_endpoint(MODELS, "iris", "Staging").version == "4"
    with pytest.raises(UnknownEndpoint):
        paths.resolve_model_endpoint(MODELS, "pinned", "9")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("/model-endpoint/{name}/{version}/invocations", "/model-endpoint/a%20b/3/invocations"),
        ("/serving-endpoints/{endpoint}/invocations", "/serving-endpoints/e%2Fx/invocations"),
        ("/invocations", "/invocations"),
    ],
)
def test_render_path_encodes_every_value(template: str, expected: str) -> None:
    ref = ModelRef(name="a b", requested="3", version="3", endpoint="e/x")
    assert paths.render_path(template, ref) == expected


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("/model/iris/1/invocations", ScoringUrl(UrlKind.LEGACY, "iris", "1")),
        ("/model/iris/Production/invocations", ScoringUrl(UrlKind.LEGACY, "iris", "Production")),
        ("/model/a%2Fb/1/invocations", ScoringUrl(UrlKind.LEGACY, "a%2Fb", "1")),
        ("/model-endpoint/iris/2/invocations", ScoringUrl(UrlKind.MODEL_ENDPOINT, "iris", "2")),
        ("/serving-endpoints/ep/invocations", ScoringUrl(UrlKind.SERVING_ENDPOINT, None, "ep")),
        # Werkzeug's strict slashes: 1.30.1 answered these 404, so they are not scoring URLs.
        ("/model/iris/1/invocations/", None),
        ("/model//1/invocations", None),
        ("/model/iris//invocations", None),
        ("/model/iris/1/2/invocations", None),
        ("/serving-endpoints//invocations", None),
        ("/serving-endpoints/a/b/invocations", None),
        ("/invocations", None),
        ("/models/iris/1/invocations", None),
        ("/model/iris/1/ping", None),
        ("/model/iris/1/invocationsx", None),
        ("", None),
    ],
)
def test_scoring_url_shapes(path: str, url: ScoringUrl | None) -> None:
    assert scoring_url(path) == url
