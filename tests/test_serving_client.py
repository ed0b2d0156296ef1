"""The client CLI: every user mistake is one readable line, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.serving_fixtures import ENV, ROOT, contract_server, exported  # noqa: F401


def client_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.client", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--rest", "bad host:xx", "list"], "is not HOST:PORT"),
    (["--rest", "127.0.0.1:1", "list"], "Connection refused"),
    (["--ca-file", "/nonexistent", "status", "m"], "cannot read /nonexistent"),
    (["predict", "m", "--mnist-test", "0"], "--mnist-test: must be at least 1, got 0"),
    (["predict", "m", "--mnist-test", "-5"], "--mnist-test: must be at least 1, got -5"),
    (["predict", "m", "--mnist-test", "5", "--batch-size", "0"],
     "--batch-size: must be at least 1, got 0"),
])
def test_user_mistakes_are_one_line(args, message):
    done = client_cli(*args)
    assert done.returncode in (1, 2) and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_rest_pointed_at_the_grpc_port_is_one_line(contract_server):  # noqa: F811
    done = client_cli("--rest", contract_server[0], "list")
    assert done.returncode == 1 and "is --rest the REST port?" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
