"""What every config section shares: the frozen base model and the value types. Pure."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# Used with `fullmatch` only: `$` would also accept a trailing newline.
VERSION_RE = re.compile(r"[0-9]+")
# Names become URL path segments and metric labels: keep them to what registries allow.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Frozen(BaseModel):
    """A config section: immutable once validated, and a typo'd key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _duration(value: Any) -> Any:
    """`10m`, `30s`, `500ms`, `1h`, or a number of seconds."""
    if isinstance(value, str):
        match = DURATION_RE.match(value)
        if match is None:
            raise ValueError("must be a duration such as 500ms, 30s, 10m or 1h")
        return float(match.group(1)) * DURATION_UNITS[match.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Percent = Annotated[float, Field(ge=0, le=100)]
Share = Annotated[float, Field(ge=0, le=1)]


def _env_name(value: str) -> str:
    if not ENV_RE.fullmatch(value):
        raise ValueError("must be an environment variable name")
    return value


# The name of an environment variable holding a secret; the secret never lives in the file.
EnvName = Annotated[str, AfterValidator(_env_name)]
