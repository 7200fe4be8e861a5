"""Commands a test suite needs to succeed, and virtual environments of their own for tools
whose pins fight the project's (MLflow, checkov): made once, then reused by a stamp."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

STAMP = ".serving-proxy-requirements"
CREATE_TIMEOUT_S = 120


def run_checked(argv: list[str], what: str, timeout: float, hint: str = "", **kwargs: Any) -> None:
    """Run `argv` (no stdin) or fail the test, naming `what`, the command, the end of its
    output, and `hint` when given."""
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: no result after {timeout:.0f} s: {argv}")
    if result.returncode != 0:
        pytest.fail(
            f"{what} failed ({result.returncode}): {argv}\n"
            f"{(result.stdout + result.stderr)[-4000:]}" + (f"\n{hint}" if hint else "")
        )


def stamped_venv(
    venv: Path, requirements: Sequence[str], what: str, timeout: float, hint: str = ""
) -> Path:
    """`venv` with `requirements` installed; installed once, then reused while its stamp
    lists the same requirements. Returns its bin/."""
    python = venv / "bin" / "python"
    stamp = venv / STAMP
    want = "\n".join(requirements) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == want:
        return python.parent
    if not python.exists():
        run_checked(
            [sys.executable, "-m", "venv", str(venv)],
            f"creating {venv.name}",
            CREATE_TIMEOUT_S,
            hint,
        )
    run_checked(
        [str(python), "-m", "pip", "install", "--quiet", *requirements],
        f"installing {what} into {venv.name}",
        timeout,
        hint,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    stamp.write_text(want, encoding="utf-8")
    return python.parent
