"""The README's annotated configuration is a config the proxy accepts: docs stay true."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from proxy.config import parse_config
from proxy.models import Backend

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_configuration_reference_loads() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Configuration reference") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block is not None
    data = yaml.safe_load(block.group(1))
    config = parse_config(data, {"IRIS_ENDPOINT_TOKEN": "t"}, "README.md")
    assert config.retry_for("iris", Backend.SERVERLESS).on == (429, 503, "connect")
    assert config.models["iris"].queue.size == 100
    assert config.backends.serverless is not None
    assert config.backends.serverless.auth == "databricks"
    assert config.client_auth is not None
    assert config.client_auth.mode == "tokens"
