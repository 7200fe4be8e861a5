"""Every URL shape of the scoring protocols, which configured model a URL names, and the
upstream path the config gives it. Pure.

A URL segment never becomes part of an upstream URL unless the config named it: the model
is looked up by name, the version is a configured stage's version or a plain number, and
every value is percent-encoded into the configured template (protocols.md §1.2, §1.5).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from urllib.parse import quote

from proxy.config import ModelConfig
from proxy.config.base import VERSION_RE
from proxy.errors import UnknownEndpoint, UnknownModel
from proxy.models import ModelRef


class UrlKind(Enum):
    LEGACY = "legacy"  # /model/<name>/<version-or-stage>/invocations (§1.2)
    MODEL_ENDPOINT = "model-endpoint"  # /model-endpoint/<name>/<version>/invocations (§1.5)
    SERVING_ENDPOINT = "serving-endpoint"  # /serving-endpoints/<endpoint>/invocations (§1.5)


@dataclass(frozen=True, slots=True)
class ScoringUrl:
    """A scoring URL's kind and its path parameters (`name` None for serving-endpoints)."""

    kind: UrlKind
    name: str | None
    segment: str


# Asked twice a request (client_auth, then the dispatch) of the same few paths: remembered,
# within a bound, since any client may send any path.
@functools.lru_cache(maxsize=1024)
def scoring_url(path: str) -> ScoringUrl | None:
    """Which scoring URL `path` is (§1.2, §1.5), or None for any other path.

    A parameter is one non-empty path segment, as Starlette's `{param}` matches it.
    """
    if not path.endswith("/invocations"):
        return None
    parts = path.split("/")
    # ["", "model", name, version, "invocations"] and the like; empty segments never match.
    if len(parts) == 5 and parts[2] and parts[3]:
        if parts[1] == "model":
            return ScoringUrl(UrlKind.LEGACY, parts[2], parts[3])
        if parts[1] == "model-endpoint":
            return ScoringUrl(UrlKind.MODEL_ENDPOINT, parts[2], parts[3])
    elif len(parts) == 4 and parts[1] == "serving-endpoints" and parts[2]:
        return ScoringUrl(UrlKind.SERVING_ENDPOINT, None, parts[2])
    return None


def resolve_legacy(models: Mapping[str, ModelConfig], name: str, segment: str) -> ModelRef:
    """Resolve `/model/<name>/<version-or-stage>/...` (§1.2 steps 2–3).

    A stage is resolved through `stages:` (exact, case-sensitive); a number is used as is,
    unless the model lists `versions:` and this one is not among them.

    Raises:
        UnknownModel: the model, stage or version is not served.
    """
    model = models.get(name)
    if model is None:
        raise UnknownModel(name, segment)
    version = _version(model, segment)
    if version is None:
        raise UnknownModel(name, segment)
    return ModelRef(name=name, requested=segment, version=version, endpoint=model.endpoint or name)


def resolve_model_endpoint(models: Mapping[str, ModelConfig], name: str, segment: str) -> ModelRef:
    """Resolve a migrated client's `/model-endpoint/<name>/<version>/invocations` (§1.5.1).

    Raises:
        UnknownEndpoint: §1.5 step 3.
    """
    try:
        return resolve_legacy(models, name, segment)
    except UnknownModel:
        raise UnknownEndpoint(f"{name}/{segment}") from None


def resolve_serving_endpoint(models: Mapping[str, ModelConfig], endpoint: str) -> ModelRef:
    """Resolve a migrated client's `/serving-endpoints/<endpoint>/invocations` (§1.5.1).

    The URL carries no version; `{version}` in a template then means the model's
    `Production` stage, else its last listed version, else is empty.

    Raises:
        UnknownEndpoint: no model has this endpoint (default: its name).
    """
    for name, model in models.items():
        if (model.endpoint or name) == endpoint:
            version = model.stages.get("Production") or (
                model.versions[-1] if model.versions else ""
            )
            return ModelRef(name=name, requested="", version=version, endpoint=endpoint)
    raise UnknownEndpoint(endpoint)


def render_path(template: str, ref: ModelRef) -> str:
    """Fill a configured path template with the resolved, percent-encoded values."""
    return template.format(
        name=quote(ref.name, safe=""),
        version=quote(ref.version, safe=""),
        endpoint=quote(ref.endpoint, safe=""),
    )


def _version(model: ModelConfig, segment: str) -> str | None:
    if segment in model.stages:
        return model.stages[segment]
    if not VERSION_RE.fullmatch(segment):
        return None
    if model.versions is not None and segment not in model.versions:
        return None
    return segment
