"""Which configured model a URL names, and the upstream path the config gives it. Pure.

A URL segment never becomes part of an upstream URL unless the config named it: the model
is looked up by name, the version is a configured stage's version or a plain number, and
every value is percent-encoded into the configured template (protocols.md §1.2, §1.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from proxy.config import VERSION_RE, ModelConfig
from proxy.errors import UnknownEndpoint, UnknownModel
from proxy.models import ModelRef


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
    if not VERSION_RE.match(segment):
        return None
    if model.versions is not None and segment not in model.versions:
        return None
    return segment
