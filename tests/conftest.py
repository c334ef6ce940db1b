"""Shared fixtures: a real tritonserver per test module that needs one."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from triton_guard.server import LocalServer, Ports

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
BACKENDS = REPO_ROOT / "backends"


@contextlib.contextmanager
def running_server(model_repository: Path, log_path: Path, **kwargs):
    """Start a real tritonserver on free ports; stop it (and its stubs) afterwards."""
    with open(log_path, "w") as log:
        server = LocalServer(
            model_repository=model_repository,
            ports=Ports.free(),
            backends_source=BACKENDS,
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
