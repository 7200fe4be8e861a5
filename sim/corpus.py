"""The one reader of the recorded scoring-protocol corpus (`../shared/corpus/`).

Loads `<root>/cases/*.json` into small frozen types, in file order. Read-only: nothing here
writes to the corpus. How a reply is compared with a recorded one is `sim.equality`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from proxy import jsoncodec

PROJECT_ROOT: Final = Path(__file__).resolve().parent.parent
# The corpus sits beside the project root (architecture: `../shared/corpus`).
DEFAULT_CORPUS: Final = PROJECT_ROOT.parent / "shared" / "corpus"
# The corpus names the 2.x and 3.x sides of a case `v2` and `v3` (its README).
NEW_SIDES: Final = ("v2", "v3")


class CorpusError(ValueError):
    """The directory given is not a corpus root (it has no `cases/`)."""


@dataclass(frozen=True, slots=True)
class Request:
    """A recorded request. `headers` holds only what the recorder set (lower-case names)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: str

    @property
    def content_type(self) -> str | None:
        """The Content-Type sent, or None: the recorder sent no header at all."""
        return self.headers.get("content-type")

    @property
    def body_bytes(self) -> bytes:
        return self.body.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Response:
    """A recorded response: status, `content-type` (and `allow` on 405), body as on the wire."""

    status: int
    headers: Mapping[str, str]
    body: str

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def body_bytes(self) -> bytes:
        return self.body.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Side:
    """One server's half of a case: what was sent to it and what it answered."""

    server: str
    request: Request
    response: Response


@dataclass(frozen=True, slots=True)
class Case:
    """One logical case; a side is None when that server has no equivalent request."""

    id: str
    model: str
    description: str
    legacy: Side | None
    v2: Side | None
    v3: Side | None

    def side(self, name: str) -> Side | None:
        """The side called `name` in the corpus files: `legacy`, `v2` or `v3`."""
        sides = {"legacy": self.legacy, "v2": self.v2, "v3": self.v3}
        if name not in sides:
            raise KeyError(name)
        return sides[name]

    def new_sides(self) -> list[tuple[str, Side]]:
        """The recorded 2.x / 3.x sides, as `(name, side)` pairs."""
        pairs = [(name, self.side(name)) for name in NEW_SIDES]
        return [(name, side) for name, side in pairs if side is not None]


def _side(raw: Mapping[str, Any] | None) -> Side | None:
    if raw is None:
        return None
    request, response = raw["request"], raw["response"]
    return Side(
        server=raw.get("server", ""),
        request=Request(
            method=request["method"],
            path=request["path"],
            headers=dict(request["headers"]),
            body=request["body"],
        ),
        response=Response(
            status=response["status"], headers=dict(response["headers"]), body=response["body"]
        ),
    )


def read_case(path: Path) -> Case:
    """One case file."""
    raw = jsoncodec.loads(path.read_bytes())
    return Case(
        id=raw["id"],
        model=raw["model"],
        description=raw.get("description", ""),
        legacy=_side(raw.get("legacy")),
        v2=_side(raw.get("v2")),
        v3=_side(raw.get("v3")),
    )


def load_cases(root: Path = DEFAULT_CORPUS) -> tuple[Case, ...]:
    """Every case under `<root>/cases/`, in file order (which the replay and samples keep).

    Raises:
        CorpusError: `root` has no `cases/` directory.
    """
    cases_dir = root / "cases"
    if not cases_dir.is_dir():
        raise CorpusError(f"{root}: no cases/ directory (expected the corpus root)")
    return tuple(read_case(path) for path in sorted(cases_dir.glob("*.json")))


def get_case(case_id: str, root: Path = DEFAULT_CORPUS) -> Case:
    """The case with this id (e.g. `"iris/pandas-split"`).

    Raises:
        KeyError: no case has this id.
    """
    for case in load_cases(root):
        if case.id == case_id:
            return case
    raise KeyError(case_id)
