"""The command line's dispatch: the proxy's own commands, and the tools of other packages
(`simulate`, `demo`, `loadtest`) handed their arguments at run time."""

from __future__ import annotations

import sys

import pytest

from proxy.cli.main import EXTERNAL_COMMANDS, main


@pytest.mark.parametrize(("command", "prog"), [("simulate", "simulate"), ("demo", "demo")])
def test_a_tool_parses_its_own_flags(
    command: str, prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"serving-proxy {prog}" in capsys.readouterr().out


def test_the_tools_are_listed_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in EXTERNAL_COMMANDS)


def test_an_installation_without_the_tools_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As in the container image, which ships the proxy alone.
    # Both entries: an earlier test may have imported the tool's module already.
    monkeypatch.setitem(sys.modules, "sim", None)
    monkeypatch.setitem(sys.modules, "sim.cli", None)
    assert main(["simulate", "--port", "0"]) == 2
    assert "needs the `sim` package" in capsys.readouterr().err
