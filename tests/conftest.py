"""Shared fixtures: a real tritonserver per test module that needs one."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

import pytest

from triton_guard import defaults
from triton_guard.model_config import set_parameters  # noqa: F401  (tests import it from here)
from triton_guard.server import LocalServer, Ports
from triton_guard_demo.repository import MODEL_REPOSITORY, fast_model_repository  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
# One key for the session's servers (`serve` restricts its admin APIs): every
# LocalServer takes it from the environment, and so do the CLI processes tests start.
os.environ.setdefault(defaults.API_KEY_ENV, f"triton-guard-tests-{secrets.token_hex(12)}")


def wait_until(predicate, timeout_s: float, what: str):
    """Poll a real server's behaviour until `predicate()` is truthy (its value), or fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def call_pipeline(server, images, client_timeout_s: float = 30.0):
    """(ok, the result or the InferenceServerException, seconds) for one `pipeline` request over gRPC."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(server.grpc_url)
    image = grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")
    image.set_data_from_numpy(images)
    started = time.monotonic()
    try:
        result = client.infer("pipeline", [image], client_timeout=client_timeout_s)
        return True, result, time.monotonic() - started
    except InferenceServerException as exc:
        return False, exc, time.monotonic() - started


@contextlib.contextmanager
def running_server(model_repository: Path, log_path: Path, **kwargs):
    """Start a real tritonserver on free ports; stop it (and its stubs) afterwards."""
    with open(log_path, "w") as log:
        server = LocalServer(
            model_repository=model_repository,
            ports=Ports.free(),
            log=log,
            # Requests stuck in a killed stub would hold a graceful stop for 30 s.
            extra_args=("--exit-timeout-secs=3",),
            **kwargs,
        )
        try:
            server.start()
        except Exception:
            log.flush()
            print(log_path.read_text()[-5000:])
            raise
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def pipeline_server(tmp_path_factory):
    """The project's own model repository, exactly as `triton-guard serve` runs it."""
    log = tmp_path_factory.mktemp("pipeline-server") / "tritonserver.log"
    with running_server(MODEL_REPOSITORY, log) as server:
        yield server
