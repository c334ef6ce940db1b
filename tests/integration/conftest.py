"""What the integration modules share: real servers, the test models' fault hooks, the command line.

Every module here talks to a real tritonserver, one per module at most
(`pipeline_server` is one for the whole session). The test models under
repos/ take their faults from repos/fault_hooks.py; `set_fault` is the test's
side of it. Modules import the helpers from here:
`from tests.integration.conftest import running_server`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from triton_guard import promtext
from triton_guard.guard.breaker import BreakerSnapshot, CircuitBreaker, State
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.shared_state import SharedFileStore
from triton_guard.server import LocalServer, Ports
from triton_guard_demo.repository import MODEL_REPOSITORY, fast_model_repository  # noqa: F401  (imported from here)

REPOS = Path(__file__).parent / "repos"
FOREIGN = REPOS / "foreign"  # a user's repository in the shape of python_backend's examples
CLI = Path(sys.executable).parent / "triton-guard"
FAULTS_ENV = "TRITON_GUARD_TEST_FAULTS"  # the folder of fault_hooks.FaultControl's files

# The test models import repos/fault_hooks.py by name. A stub's interpreter ignores
# PYTHONPATH, but LocalServer hands the caller's PYTHONPATH to its stubs (an overlay
# .pth, server/locate.py), so every server started from here, and every copy of a
# repository it serves, finds the hooks. Last on the path: it shadows nothing.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPOS)) if p)

# The canary's memory trend on a short scale: 10 s of samples every 200 ms;
# readiness fails only on a fast fall (the floor within 60 s).
SHORT_TREND_CANARY = {
    "deadline_ms": "1500",
    "interval_ms": "1000",
    "sample_interval_ms": "200",
    "trend_window_s": "10",
    "trend_min_samples": "8",
    "trend_min_span_s": "2",
    "trend_horizon_s": "60",
}


# --- servers ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def running_server(model_repository: Path, log_path: Path, **kwargs):
    """Start a real tritonserver on free ports; stop it (and its stubs) afterwards. Its log: `server.log_path`."""
    with open(log_path, "w") as log:
        server = LocalServer(
            model_repository=model_repository,
            ports=Ports.free(),
            log=log,
            # Requests stuck in a killed stub would hold a graceful stop for 30 s.
            extra_args=("--exit-timeout-secs=3",),
            **kwargs,
        )
        server.log_path = log_path
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


@contextlib.contextmanager
def chaos_server(tmp: Path, canary: dict | None = None, **guard_params):
    """A `serve --chaos` server on a copy of the project's repository with short guard limits (in `tmp`)."""
    repository = fast_model_repository(tmp, canary=canary, **guard_params)
    with running_server(repository, tmp / "tritonserver.log", chaos=True) as server:
        yield server


@pytest.fixture(scope="session")
def pipeline_server(tmp_path_factory):
    """The project's own model repository, exactly as `triton-guard serve` runs it."""
    log = tmp_path_factory.mktemp("pipeline-server") / "tritonserver.log"
    with running_server(MODEL_REPOSITORY, log) as server:
        yield server


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


def infer(client, model: str, inputs, timeout_s: float = 30.0):
    """(the result or the InferenceServerException, seconds) for one request through a tritonclient client."""
    from tritonclient.utils import InferenceServerException

    started = time.monotonic()
    try:
        return client.infer(model, inputs, client_timeout=timeout_s), time.monotonic() - started
    except InferenceServerException as exc:
        return exc, time.monotonic() - started


def metric(metrics_url: str, name: str, **labels: str) -> float:
    """The sum of a family's samples on /metrics whose labels include `labels` (0.0 when none)."""
    return sum(
        s.value
        for s in promtext.fetch(metrics_url, 5)
        if promtext.matches(s.name, name) and all(s.labels.get(k) == v for k, v in labels.items())
    )


def breaker_snapshot(server, upstream: str) -> BreakerSnapshot:
    """The shared breaker of `upstream` as the server's guards see it (read from its state file)."""
    return CircuitBreaker(upstream, GuardConfig(), SharedFileStore(server.state_dir)).snapshot()


def breaker_state(server, upstream: str) -> State:
    return breaker_snapshot(server, upstream).state


# --- the command line ------------------------------------------------------------------------------


def run_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """`triton-guard ARGS` as a user runs it."""
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=timeout_s)


def chaos(server, *args: str) -> None:
    """`triton-guard chaos ARGS` against `server` (anything with a grpc_url); it must succeed."""
    done = run_cli("chaos", *args, "--url", server.grpc_url)
    assert done.returncode == 0, done.stdout + done.stderr


# --- the test models' faults (repos/fault_hooks.py) -------------------------------------------------


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> Path:
    """The module's folder of fault control files: pass it to the server as env={FAULTS_ENV: str(faults)}."""
    return tmp_path_factory.mktemp("faults")


def set_fault(faults: Path, model: str, mode: str, **extra) -> None:
    """What `model` does from its next execute: ok, hang, error, slow (slow_ms=...) or raise."""
    tmp = faults / f".{model}.tmp"
    tmp.write_text(json.dumps({"mode": mode, **extra}))
    os.replace(tmp, faults / f"{model}.json")  # atomic: the model never reads half a file
