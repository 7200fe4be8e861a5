"""The `simulate` command: its flags, its refusals, and a real run until SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from sim.cli import add_simulate_arguments
from tests.sim.support import (
    CORPUS,
    needs_corpus,
    recorded_side,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_simulate_arguments_defaults() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_simulate_arguments(parser)
    args = parser.parse_args([])
    assert (args.kind, args.host, args.port, args.corpus, args.seed) == (
        "serverless",
        "127.0.0.1",
        None,
        None,
        0,
    )
    args = parser.parse_args(["--kind", "legacy", "--delay-ms", "5", "--fail-rate", "0.1"])
    assert (args.kind, args.delay_ms, args.fail_rate) == ("legacy", 5.0, 0.1)


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--host", "0.0.0.0"], "loopback only"), (["--fail-rate", "3"], "fail_rate")],
)
def test_simulate_refuses_bad_flags(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sim", "simulate", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr


@needs_corpus
def test_simulate_command_serves_until_terminated() -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "sim",
        "simulate",
        "--kind",
        "legacy",
        "--port",
        str(port),
        "--corpus",
        str(CORPUS),
    ]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
            while True:
                assert process.poll() is None, "the simulator exited early"
                try:
                    response = client.get("/version")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the simulator did not start"
                    time.sleep(0.05)
            assert response.text == "1.30.1"
            case = recorded_side("iris/pandas-split", "legacy")
            answer = client.post(
                "/model/iris/1/invocations",
                content=case.request.body_bytes,
                headers=dict(case.request.headers),
            )
            assert answer.text == case.response.body
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal it captured (Server.capture_signals)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
