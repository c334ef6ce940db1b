"""deployment.yaml's readinessProbe command, run as the kubelet would, against a real server.

The argv comes from the manifest unchanged except for two things the pod
provides and a test host does not: `--url` points at this test's server
instead of the pod's localhost:8001, and `triton-guard` is the venv's console
script (in the image it is on PATH). Both runs must finish within the probe's
timeoutSeconds, process start-up included: that is the kubelet's limit.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.deploy_helpers import (
    DEPLOYMENT,
    load_one,
    option,
    readiness_probe_command,
    server_container,
    with_option,
)

pytestmark = pytest.mark.integration

EXIT_READY = 0
EXIT_UNREACHABLE = 2


def _kubelet_timeout_s() -> float:
    return float(server_container(load_one(DEPLOYMENT))["readinessProbe"]["timeoutSeconds"])


def _local_argv(url: str) -> list[str]:
    argv = readiness_probe_command()
    executable = Path(sys.executable).parent / argv[0]
    assert executable.is_file(), f"{argv[0]} is not installed next to {sys.executable}"
    return [str(executable), *with_option(argv[1:], "--url", url)]


def _run(argv: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    limit_s = _kubelet_timeout_s()
    started = time.monotonic()
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"probe still running after timeoutSeconds={limit_s:g}: the kubelet would have killed it")
    return result, time.monotonic() - started


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_manifests_probe_command_passes_against_a_ready_server(pipeline_server):
    argv = _local_argv(pipeline_server.grpc_url)
    assert option(argv, "--timeout") == option(readiness_probe_command(), "--timeout")
    result, elapsed_s = _run(argv)
    assert result.returncode == EXIT_READY, result.stdout + result.stderr
    assert result.stdout.startswith("ready:"), result.stdout
    assert elapsed_s < _kubelet_timeout_s()


def test_the_manifests_probe_command_says_unreachable_for_a_closed_port():
    result, elapsed_s = _run(_local_argv(f"localhost:{_closed_port()}"))
    assert result.returncode == EXIT_UNREACHABLE, result.stdout + result.stderr
    assert "unreachable" in result.stdout, result.stdout
    assert elapsed_s < _kubelet_timeout_s()
