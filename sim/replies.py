"""How the imitated MLflow servers write an answer: media types, JSON and error bodies.

Builds Starlette responses only; deciding which answer to give is the callers' job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from starlette.responses import Response

from proxy import jsoncodec

JSON: Final = "application/json"
TEXT: Final = "text/plain; charset=utf-8"
HTML: Final = "text/html; charset=utf-8"

# Quoted from both recorded servers (protocols.md §6.1, §6.2).
ONLY_UTF8: Final = "The scoring server only supports UTF-8"


class Rejected(Exception):
    """A request the imitated server refuses; carries the answer it would give."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def json_response(obj: Any, status: int = 200) -> Response:
    # MLflow writes every body with stdlib json.dump defaults (§5.1, §5.2, §6).
    return Response(jsoncodec.dumps_legacy(obj), status_code=status, media_type=JSON)


def mlflow_error(status: int, error_code: str, message: str) -> Response:
    return json_response({"error_code": error_code, "message": message}, status)


def bad_request(message: str) -> Rejected:
    return Rejected(mlflow_error(400, "BAD_REQUEST", message))


def plain(
    status: int, text: str, content_type: str = TEXT, extra: Mapping[str, str] | None = None
) -> Response:
    headers = {"content-type": content_type, **(extra or {})}
    return Response(text.encode(), status_code=status, headers=headers)
