"""The frozen values that flow between the steps of one exchange. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# A request body on its way upstream. A bytearray when it was written in place (a large
# CSV split, protocol/v2.py): converting it to bytes would hold the whole body twice.
Body = bytes | bytearray


class Backend(StrEnum):
    """Where a request is sent (architecture §1.2: `LEGACY` / `NEW`)."""

    LEGACY = "legacy"
    SERVERLESS = "serverless"


class LegacyFormat(StrEnum):
    """How a legacy body was read (protocols.md §2.2, §2.3); also a metrics label."""

    CSV = "csv"
    JSON_SPLIT = "json-split"  # plain application/json, dict -> split orient (§2.3 step 4)
    JSON_RECORDS = "json-records"  # plain application/json, list -> records (§2.3 step 2)
    PANDAS_SPLIT = "pandas-split"  # format=pandas-split (§2.2 L-SPLIT)
    PANDAS_RECORDS = "pandas-records"  # format=pandas-records (§2.2 L-REC)
    NUMPY_SPLIT = "numpy-split"  # application/json-numpy-split (§2.2 L-NPS)
    INSTANCES = "instances"  # {"instances": ...} (§2.5)
    INPUTS = "inputs"  # {"inputs": ...} (§2.5)
    V2 = "v2"  # a new-protocol body accepted under accept_v2_bodies (§4.1)


class CsvMode(StrEnum):
    """§4.1 row L-CSV: forward CSV bytes, or convert them to `dataframe_split`."""

    PASSTHROUGH = "passthrough"
    SPLIT = "split"


class UpstreamNan(StrEnum):
    """§4.2: keep bare NaN/Infinity tokens upstream, or rewrite them to null."""

    KEEP = "keep"
    NULL = "null"


class LegacyProtocol(StrEnum):
    """§8.1: what the model spoke on legacy serving."""

    MLFLOW1 = "mlflow1"
    MLFLOW2 = "mlflow2"


@dataclass(frozen=True, slots=True)
class ContentType:
    """A Content-Type header read the way MLflow 1.30.1 reads it (§2.1)."""

    raw: str
    mime: str
    charset: str
    format: str | None


@dataclass(frozen=True, slots=True)
class LegacyRequest:
    """A legacy body that passed the 1.30.1 validation of §4.1.

    `payload` is the parsed JSON (None for CSV); `body` the bytes as received.
    """

    format: LegacyFormat
    payload: Any
    body: bytes
    content_type: ContentType


@dataclass(frozen=True, slots=True)
class V2Request:
    """What is sent to the new-protocol endpoint (§3, §4)."""

    content_type: str
    body: Body


def first_header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first value of a header among raw pairs, matched case-insensitively."""
    lname = name.lower()
    for key, value in headers:
        if key.lower() == lname:
            return value
    return None


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """One answer from an upstream, as received. Timings are in seconds."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    elapsed_s: float = 0.0

    def header(self, name: str) -> str | None:
        """The first value of a header, case-insensitively."""
        return first_header(self.headers, name)

    @property
    def content_type(self) -> str:
        return self.header("content-type") or ""


@dataclass(frozen=True, slots=True)
class Reply:
    """A finished answer to the client: translated or made locally."""

    status: int
    body: bytes
    content_type: str | None = "application/json"
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled with every shadow job: a constructor call beats the slots state protocol.
        return (Reply, (self.status, self.body, self.content_type, self.headers))


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A request's model after §1.2 / §1.5 resolution against the config.

    `requested` is the version-or-stage segment as the client wrote it;
    `version` the version on the new side (a stage resolved through `stages:`).
    """

    name: str
    requested: str
    version: str
    endpoint: str

    def __reduce__(self) -> tuple[Any, ...]:
        return (ModelRef, (self.name, self.requested, self.version, self.endpoint))
