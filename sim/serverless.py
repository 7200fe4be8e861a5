"""The MLflow 2.22.5 ("serverless") scoring server the simulator imitates (protocols.md §3, §5.2).

Reads 2.x requests (`dataframe_split`, `dataframe_records`, `instances`, `inputs`, CSV) and
refuses them with the recorded 2.x texts and FastAPI bodies. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Final

from starlette.responses import Response

from proxy import jsoncodec
from sim.dialect import SimulatorKind
from sim.replies import (
    JSON,
    ONLY_UTF8,
    Rejected,
    bad_request,
    json_response,
    mlflow_error,
    plain,
)
from sim.scoring import csv_rows, parse_content_type, split_rows, tensor_rows

KIND: Final[SimulatorKind] = "serverless"
VERSION: Final = "2.22.5"
# 2.x first, then 3.x: the proxy's new side may be either.
REPLAY_SIDES: Final = ("v2", "v3")

# Messages quoted from the 2.22.5 server the corpus recorded (protocols.md §6.2).
_PROTOCOL_CHANGED: Final = (
    "IMPORTANT: The MLflow Model scoring protocol has changed in MLflow version 2.0. If you are "
    "seeing this error, you are likely using an outdated scoring request format. To resolve the "
    "error, either update your request format or adjust your MLflow Model's requirements file to "
    "specify an older version of MLflow (for example, change the 'mlflow' requirement specifier "
    "to 'mlflow==1.30.0'). If you are making a request using the MLflow client (e.g. via "
    "`mlflow.pyfunc.spark_udf()`), upgrade your MLflow client to a version >= 2.0 in order to "
    "use the new request format. For more information about the updated MLflow Model scoring "
    "protocol in MLflow 2.0, see https://mlflow.org/docs/latest/models.html#deploy-mlflow-models."
)
_REQUIRED_INPUT_FORMAT: Final = (
    "The input must be a JSON dictionary with exactly one of the input fields "
    "{'instances', 'dataframe_records', 'dataframe_split', 'inputs'}"
)
_FORMAT_KEYS: Final = ("dataframe_split", "dataframe_records", "instances", "inputs")


def is_invocations(path: str) -> bool:
    """Any path ending in `/invocations`: the proxy posts where its config says."""
    return path.endswith("/invocations")


def read_rows(content_type: str | None, body: bytes) -> list[Any]:
    """Read a 2.x request (§3.1-§3.3) into model rows, or refuse it as 2.22.5 would."""
    if content_type is None:
        raise Rejected(plain(500, "Internal Server Error"))
    mime, params = parse_content_type(content_type)
    if params.get("charset", "utf-8").lower() != "utf-8":
        raise Rejected(plain(415, ONLY_UTF8))
    unknown = [key for key in params if key != "charset"]
    if unknown:
        raise Rejected(
            plain(
                415,
                f"Unrecognized content type parameters: {', '.join(unknown)}. " + _PROTOCOL_CHANGED,
            )
        )
    if mime == "text/csv":
        return csv_rows(body)
    if mime != "application/json":
        raise Rejected(
            plain(
                415,
                "This predictor only supports the following content types: "
                f"Types: ['text/csv', 'application/json']. Got '{content_type}'.",
            )
        )
    try:
        obj = jsoncodec.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(
            f"Invalid input. Ensure that input is a valid JSON formatted string. Error: '{exc!r}'"
        ) from exc
    if isinstance(obj, list):
        raise bad_request(f"Invalid input. {_REQUIRED_INPUT_FORMAT}. Received a list.")
    if not isinstance(obj, dict):
        raise bad_request(
            f"Invalid input. {_REQUIRED_INPUT_FORMAT}. Received unexpected input type '{type(obj)}."
        )
    keys = [key for key in _FORMAT_KEYS if key in obj]
    if len(keys) != 1:
        raise bad_request(
            f"{_REQUIRED_INPUT_FORMAT}. Received dictionary with input fields: {keys}. "
            + _PROTOCOL_CHANGED
        )
    if not isinstance(obj.get("params", {}), dict):
        raise Rejected(mlflow_error(400, "INVALID_PARAMETER_VALUE", "params must be a JSON object"))
    key = keys[0]
    value = obj[key]
    if key == "dataframe_split":
        return split_rows(
            value,
            require_data=True,
            error="Dataframe split format must have 'data' field and optionally 'columns' "
            f"and 'index' fields. Got {value}.'",
        )
    if key == "dataframe_records":
        if not isinstance(value, list):
            raise bad_request("Dataframe records format must be a list of records. Got dictionary.")
        return value
    return tensor_rows(value)


def render(predictions: list[float]) -> Response:
    """2.x wraps the predictions (§5.2)."""
    return json_response({"predictions": predictions})


def method_not_allowed() -> Response:
    return Response(
        b'{"detail":"Method Not Allowed"}',
        status_code=405,
        media_type=JSON,
        headers={"allow": "POST"},
    )


def not_found() -> Response:
    return Response(b'{"detail":"Not Found"}', status_code=404, media_type=JSON)
