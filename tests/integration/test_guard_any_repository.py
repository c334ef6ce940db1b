"""`triton-guard guard` on a repository that looks nothing like the demo, through a real server.

The foreign repository (repos/foreign/README.md) is copied, guarded with the
installed command as a user would (add_sub behind a guard, the ensemble
add_then_scale rerouted through it; tokenize, batched with BYTES, behind
another), served, and called. Faults come from a FAULT file in a model's
directory. One server for the module.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from triton_guard.server import admin_headers_from_environment
from tests.conftest import wait_until
from tests.integration.conftest import FOREIGN, infer, running_server
from triton_guard.model_config import CONFIG_FILE, read_config, write_config

pytestmark = pytest.mark.integration

TRITON_GUARD = Path(sys.executable).parent / "triton-guard"
TIMEOUT_MS = 800
# The guard answers by its timeout; the rest is gRPC and a loaded 2-core runner.
ANSWER_BY_S = TIMEOUT_MS / 1000 + 1.5


def guard_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TRITON_GUARD), "guard", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return Path(shutil.copytree(FOREIGN, tmp_path_factory.mktemp("foreign") / "models"))


@pytest.fixture(scope="module")
def written(repo):
    """What the command printed for each guard it wrote before the server started."""
    runs = {
        "add_sub": guard_cli(
            "add_sub", "--model-repository", str(repo), "--ensemble", "add_then_scale",
            "--param", f"timeout_ms={TIMEOUT_MS}", "--param", "failure_threshold=3", "--param", "recovery_ms=1000",
        ),
        "tokenize": guard_cli("tokenize", "--model-repository", str(repo), "--param", f"timeout_ms={TIMEOUT_MS}"),
    }  # fmt: skip
    for model, run in runs.items():
        assert run.returncode == 0, f"{model}: {run.stderr}"
    return runs


@pytest.fixture(scope="module")
def server(tmp_path_factory, repo, written):
    log = tmp_path_factory.mktemp("foreign-server") / "tritonserver.log"
    with running_server(repo, log) as srv:
        yield srv


@pytest.fixture
def client(server):
    return grpcclient.InferenceServerClient(server.grpc_url)


@pytest.fixture
def fault(repo):
    """fault(model, kind) writes a FAULT file; every one is removed after the test."""
    paths = []

    def set_fault(model: str, kind: str) -> None:
        path = repo / model / "FAULT"
        path.write_text(kind)
        paths.append(path)

    yield set_fault
    for path in paths:
        path.unlink(missing_ok=True)


def fp32(name: str, array: np.ndarray):
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def add_sub_inputs(rng, names=("INPUT0", "INPUT1")):
    a, b = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    return a, b, [fp32(names[0], a), fp32(names[1], b)]


def test_the_command_said_what_it_wrote_and_how_to_call_it(repo, written):
    out = written["add_sub"].stdout
    assert f"wrote {repo / 'add_sub_guard' / CONFIG_FILE}" in out
    assert f"rewrote {repo / 'add_then_scale' / CONFIG_FILE}" in out and "clients keep calling 'add_then_scale'" in out
    assert "call 'tokenize_guard' instead of 'tokenize'" in written["tokenize"].stdout
    steps = read_config(repo / "add_then_scale" / CONFIG_FILE).ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["add_sub_guard", "scale"]


def test_unbatched_guard_answers_as_its_upstream(client):
    rng = np.random.default_rng(0)
    a, b, inputs = add_sub_inputs(rng)
    guarded, _ = infer(client, "add_sub_guard", inputs)
    direct, _ = infer(client, "add_sub", inputs)
    np.testing.assert_array_equal(guarded.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(guarded.as_numpy("OUTPUT1"), a - b)
    np.testing.assert_array_equal(guarded.as_numpy("OUTPUT0"), direct.as_numpy("OUTPUT0"))


def test_rerouted_ensemble_answers_through_the_guard(client):
    rng = np.random.default_rng(1)
    a, b, inputs = add_sub_inputs(rng, ("A", "B"))
    result, _ = infer(client, "add_then_scale", inputs)
    np.testing.assert_allclose(result.as_numpy("SCALED_SUM"), 2 * (a + b), rtol=1e-6)


def test_batched_bytes_guard_answers_as_its_upstream(client):
    texts = ["hello", "Triton guard", "ünïcode"]
    text = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    result, _ = infer(client, "tokenize_guard", [text])
    assert [row[0].decode() for row in result.as_numpy("UPPER")] == [t.upper() for t in texts]
    assert result.as_numpy("LENGTH")[:, 0].tolist() == [len(t) for t in texts]  # characters, not bytes


def test_hang_makes_the_guard_answer_unavailable_by_its_timeout(client, fault):
    rng = np.random.default_rng(2)
    a, b, inputs = add_sub_inputs(rng)
    fault("add_sub", "hang")
    error, seconds = infer(client, "add_sub_guard", inputs)
    assert isinstance(error, InferenceServerException), "a hung upstream answered"
    assert str(error.status()) == "StatusCode.UNAVAILABLE"
    assert f"model 'add_sub' did not answer within timeout_ms={TIMEOUT_MS}" in error.message()
    assert TIMEOUT_MS / 1000 * 0.9 <= seconds <= ANSWER_BY_S
    # Through the ensemble too: its step is the guard.
    error, seconds = infer(client, "add_then_scale", add_sub_inputs(rng, ("A", "B"))[2])
    assert str(error.status()) == "StatusCode.UNAVAILABLE" and seconds <= ANSWER_BY_S
    assert "in ensemble 'add_then_scale'" in error.message()


def test_after_the_hang_the_guard_recovers(client, fault, repo):
    (repo / "add_sub" / "FAULT").unlink(missing_ok=True)
    rng = np.random.default_rng(3)
    a, b, inputs = add_sub_inputs(rng)

    def answer():  # the breaker may be OPEN for recovery_ms after the hang's failures
        result, _ = infer(client, "add_sub_guard", inputs)
        return None if isinstance(result, InferenceServerException) else result

    result = wait_until(answer, 30, "add_sub_guard answering after the hang")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)


def test_a_guard_that_does_not_match_its_upstream_fails_its_load_naming_the_tensor(client, repo):
    run = guard_cli("scale", "--model-repository", str(repo))
    assert run.returncode == 0, run.stderr
    path = repo / "scale_guard" / CONFIG_FILE
    config = read_config(path)
    config.input[0].dims[:] = [3]  # scale takes [4]
    write_config(path, config)
    with pytest.raises(InferenceServerException) as failed:
        client.load_model("scale_guard", headers=admin_headers_from_environment(grpc=True))
    assert "input 'X' is TYPE_FP32 [3]" in failed.value.message() and "scale" in failed.value.message()
    assert client.is_server_live() and client.is_model_ready("add_sub_guard")


def test_the_command_refuses_an_existing_guard_with_one_line(repo):
    before = (repo / "add_sub_guard" / CONFIG_FILE).read_bytes()
    run = guard_cli("add_sub", "--model-repository", str(repo))
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "add_sub_guard already exists" in run.stderr
    assert (repo / "add_sub_guard" / CONFIG_FILE).read_bytes() == before


def test_in_process_guard_answers_and_times_out_a_hang(client, repo, fault):
    """`--in-process` on a Python model: its own config becomes backend "guard", loaded as such.

    A copy of add_sub (add_sub itself is already behind add_sub_guard, whose
    breaker is named after it) with the same FAULT file hook.
    """
    shutil.copytree(repo / "add_sub", repo / "add_sub_in_process")
    config = read_config(repo / "add_sub_in_process" / CONFIG_FILE)
    config.name = "add_sub_in_process"
    write_config(repo / "add_sub_in_process" / CONFIG_FILE, config)
    run = guard_cli(
        "add_sub_in_process", "--model-repository", str(repo), "--in-process", "--param", f"timeout_ms={TIMEOUT_MS}"
    )
    assert run.returncode == 0, run.stderr
    assert read_config(repo / "add_sub_in_process" / CONFIG_FILE).backend == "guard"
    client.load_model("add_sub_in_process", headers=admin_headers_from_environment(grpc=True))
    rng = np.random.default_rng(4)
    a, b, inputs = add_sub_inputs(rng)
    result, _ = infer(client, "add_sub_in_process", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    fault("add_sub_in_process", "hang")
    error, seconds = infer(client, "add_sub_in_process", inputs)
    assert isinstance(error, InferenceServerException), "a hung in-process model answered"
    assert str(error.status()) == "StatusCode.UNAVAILABLE" and seconds <= ANSWER_BY_S
    assert f"timeout_ms={TIMEOUT_MS}" in error.message()
