"""A whole repository guarded and unguarded through a real server, as a user would, with no key set by hand.

The repository (repos/as_found/README.md) has Python models whose config is
completed at load (no config.pbtxt), batched and unbatched, a model of three
instances, a BLS model calling two others and a decoupled model. The server
runs with a generated key; every command runs as a new process with no key
in its environment (the tools find the local serve's key by its port), and
the load commands `guard` prints are run as printed, through bash.

One server for the module, started on the unguarded repository. The tests
run in order: goldens recorded and checked, `guard --rename` of the unbatched
auto-completed model, `guard --all` for the rest, the printed load commands,
clients unchanged, a hang and the breaker, the load-time interface check
against a completed config, then `unguard` back to the original bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import wait_until
from tests.integration.conftest import infer, running_server
from triton_guard import defaults
from triton_guard.model_config import CONFIG_FILE

pytestmark = pytest.mark.integration

AS_FOUND = Path(__file__).parent / "repos" / "as_found"
TRITON_GUARD = Path(sys.executable).parent / "triton-guard"
TIMEOUT_MS = 800
ANSWER_BY_S = TIMEOUT_MS / 1000 + 1.5  # the guard answers by its timeout; the rest is gRPC on a loaded runner
# A new process as a user starts it: no key in its environment.
NO_KEY_ENV = {k: v for k, v in os.environ.items() if k not in (defaults.API_KEY_ENV, defaults.API_KEY_FILE_ENV)}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(TRITON_GUARD), *args], capture_output=True, text=True, timeout=timeout, env=NO_KEY_ENV)


def snapshot(root: Path, skip=("FAULT",)) -> dict[str, bytes | None]:
    """Every path with its bytes (None for a folder); Python's own bytecode caches aside."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
        if "__pycache__" not in p.parts and p.name not in skip
    }


def run_printed_commands(stdout: str) -> list[str]:
    """Run the curl lines a command printed, as pasted into bash; what each printed."""
    commands = [line.strip() for line in stdout.splitlines() if line.strip().startswith("curl ")]
    assert commands, stdout
    said = []
    for command in commands:
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, env=NO_KEY_ENV)
        said.append(done.stdout + done.stderr)
    return said


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return Path(shutil.copytree(AS_FOUND, tmp_path_factory.mktemp("as_found") / "models"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, repo):
    """A server with a generated key, as `triton-guard serve` has with nothing set."""
    log = tmp_path_factory.mktemp("as-found-server") / "tritonserver.log"
    saved = {k: os.environ.pop(k) for k in (defaults.API_KEY_ENV, defaults.API_KEY_FILE_ENV) if k in os.environ}
    try:
        with running_server(repo, log) as srv:
            os.environ.update(saved)
            assert srv.api_key_source == "generated"
            yield srv
    finally:
        os.environ.update(saved)


@pytest.fixture(scope="module")
def client(server):
    return grpcclient.InferenceServerClient(server.grpc_url)


def fp32(name, array):
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array.astype(np.float32))
    return tensor


def add_sub(client, model, a, b):
    result, _ = infer(client, model, [fp32("INPUT0", a), fp32("INPUT1", b)])
    assert not isinstance(result, InferenceServerException), result
    return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")


@pytest.fixture(scope="module")
def before_guarding():
    """The repository's bytes right before the first `guard` (filled by the test that records goldens)."""
    return {}


def test_goldens_of_an_auto_completed_model_with_no_key_set(server, repo, tmp_path, before_guarding):
    body = {"inputs": [{"name": n, "shape": [2, 4], "datatype": "FP32", "data": list(range(o, o + 8))}
                       for n, o in (("INPUT0", 0), ("INPUT1", 10))]}
    inputs = tmp_path / "pair.json"
    inputs.write_text(json.dumps(body))
    # No --model-repository either: the one the local server serves.
    run = cli("goldens", "record", "--url", server.grpc_url, "--model", "batch_auto", "--inputs", str(inputs))
    assert run.returncode == 0, run.stderr
    assert f"{repo / 'batch_auto'} has no config.pbtxt" in run.stdout
    golden_file = repo / "batch_auto" / "goldens" / "pair.golden.json"
    golden = json.loads(golden_file.read_text())
    assert golden["model"] == "batch_auto"
    umask = os.umask(0)
    os.umask(umask)
    assert golden_file.stat().st_mode & 0o777 == 0o666 & ~umask  # a server running as another user can read it
    probe = cli("probe", "--url", server.grpc_url, "--json", "--timeout", "10")
    assert probe.returncode == 0, probe.stdout + probe.stderr
    checks = {c["name"]: c for c in json.loads(probe.stdout)["report"]["checks"]}
    assert checks["golden:batch_auto"]["ok"], checks["golden:batch_auto"]
    before_guarding.update(snapshot(repo))


def test_guard_all_dry_run_prints_the_table_and_writes_nothing(server, repo):
    before = snapshot(repo)
    run = cli("guard", "--all", "--dry-run", "--model-repository", str(repo), "--url", server.grpc_url)
    assert run.returncode == 0, run.stderr
    assert snapshot(repo) == before
    rows = {line.split()[0]: line for line in run.stdout.splitlines()[1:] if line and not line[0].isdigit()}
    assert "would guard in-process" in rows["batch_auto"] and " server " in rows["batch_auto"]
    assert "would guard in-process" in rows["three_instances"] and "config.pbtxt" in rows["three_instances"]
    assert "skipped: decoupled" in rows["decoupled_repeat"]


def test_renamed_then_all_guarded_and_loaded_by_the_printed_commands(server, repo, client):
    params = ["--param", f"timeout_ms={TIMEOUT_MS}", "--param", "failure_threshold=2", "--param", "recovery_ms=60000"]
    renamed = cli("guard", "nobatch_auto", "--rename", "--model-repository", str(repo), "--url", server.grpc_url, *params)
    assert renamed.returncode == 0, renamed.stderr
    assert "read 'nobatch_auto' from the server at" in renamed.stdout
    assert "$(cat " in renamed.stdout  # the key file of the local serve, expanded when pasted
    assert [r.strip() for r in run_printed_commands(renamed.stdout)] == ["", ""]
    everything = cli("guard", "--all", "--model-repository", str(repo), "--url", server.grpc_url, *params)
    assert everything.returncode == 0, everything.stderr
    rows = {line.split()[0]: line for line in everything.stdout.splitlines()}
    assert "skipped: already guarded (renamed)" in rows["nobatch_auto"]
    assert "skipped: already guarded by 'nobatch_auto'" in rows["nobatch_auto_unguarded"]
    assert "guarded in-process" in rows["batch_auto"] and "guarded in-process" in rows["bls_pair"]
    assert "3 guarded, 3 skipped" in everything.stdout
    assert all(said.strip() == "" for said in run_printed_commands(everything.stdout))
    for model in ("nobatch_auto", "batch_auto", "three_instances", "bls_pair"):
        assert client.get_model_config(model).config.backend == "guard", model
    assert (repo / "three_instances" / CONFIG_FILE).read_text().startswith("# Three CPU instances")  # comments kept


def test_clients_call_the_models_as_before(client):
    a, b = np.arange(4, dtype=np.float32), np.full(4, 10, dtype=np.float32)
    out0, out1 = add_sub(client, "nobatch_auto", a, b)
    np.testing.assert_array_equal(out0, a + b)
    np.testing.assert_array_equal(out1, a - b)
    batch_a, batch_b = np.stack([a, a + 1]), np.stack([b, b])
    out0, _ = add_sub(client, "batch_auto", batch_a, batch_b)
    np.testing.assert_array_equal(out0, batch_a + batch_b)
    result, _ = infer(client, "bls_pair", [fp32("X", a)])
    np.testing.assert_array_equal(result.as_numpy("Y"), 20 * a)
    result, _ = infer(client, "three_instances", [fp32("X", a)])
    np.testing.assert_array_equal(result.as_numpy("Y"), 10 * a)


def test_a_hang_behind_the_renamed_guard_answers_by_timeout_then_fast(client, repo):
    fault = repo / "nobatch_auto_unguarded" / "FAULT"  # the model moved; its fault file with it
    fault.write_text("hang")
    a = np.ones(4, dtype=np.float32)
    try:
        for _ in range(2):  # failure_threshold=2
            error, seconds = infer(client, "nobatch_auto", [fp32("INPUT0", a), fp32("INPUT1", a)])
            assert isinstance(error, InferenceServerException), "a hung model answered"
            assert str(error.status()) == "StatusCode.UNAVAILABLE"
            assert f"did not answer within timeout_ms={TIMEOUT_MS}" in error.message()
            assert TIMEOUT_MS / 1000 * 0.9 <= seconds <= ANSWER_BY_S
        error, seconds = infer(client, "nobatch_auto", [fp32("INPUT0", a), fp32("INPUT1", a)])
        assert error.message().startswith("Service temporarily unavailable") and seconds < 0.5
        # Named as clients call it (breaker_name), not after the moved model.
        assert "circuit breaker for model 'nobatch_auto' is OPEN" in error.message(), error.message()
        # Through the BLS model too: its call to 'nobatch_auto' is the guard's.
        error, seconds = infer(client, "bls_pair", [fp32("X", a)])
        assert isinstance(error, InferenceServerException) and "Service temporarily unavailable" in error.message()
    finally:
        fault.unlink(missing_ok=True)
    # Active recovery: the breaker closes soon after the model answers again (recovery_ms is 60 s).
    wait_until(lambda: not isinstance(infer(client, "nobatch_auto", [fp32("INPUT0", a), fp32("INPUT1", a)])[0],
                                      InferenceServerException), 20, "nobatch_auto answers again")


def test_a_guard_that_does_not_match_a_completed_config_fails_its_load(server, repo, client):
    bad = repo / "mismatched_guard"
    (bad / "1").mkdir(parents=True)
    (bad / CONFIG_FILE).write_text(
        'backend: "guard"\ninput [{ name: "INPUT0", data_type: TYPE_FP32, dims: [3] }, '
        '{ name: "INPUT1", data_type: TYPE_FP32, dims: [4] }]\noutput [{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [4] }]\n'
        'parameters { key: "upstream_model" value { string_value: "nobatch_auto_unguarded" } }\n')
    try:
        with pytest.raises(InferenceServerException) as failed:
            client.load_model("mismatched_guard", headers=server.grpc_admin_headers)
        message = failed.value.message()
        assert "as the server completed it" in message and "input 'INPUT0' is TYPE_FP32 [3]" in message
    finally:
        shutil.rmtree(bad)


def test_unguard_refuses_a_hand_edit_in_one_line_and_writes_nothing(repo):
    path = repo / "three_instances" / CONFIG_FILE
    guarded = path.read_bytes()
    path.write_bytes(guarded + b"# tuned by hand\n")
    before = snapshot(repo)
    run = cli("unguard", "three_instances", "--model-repository", str(repo))
    assert run.returncode == 1 and run.stdout == "" and run.stderr.count("\n") == 1
    assert f"{path} was changed since" in run.stderr
    assert snapshot(repo) == before
    path.write_bytes(guarded)


def test_unguard_restores_the_repository_byte_for_byte(server, repo, client, before_guarding):
    assert before_guarding, "the goldens test took the snapshot"
    said = {}
    for model in ("nobatch_auto", "batch_auto", "three_instances", "bls_pair"):
        run = cli("unguard", model, "--model-repository", str(repo), "--url", server.grpc_url)
        assert run.returncode == 0, run.stderr
        said[model] = run.stdout
    assert snapshot(repo) == before_guarding
    # The printed commands put the server back too: the model under its name, the moved one unloaded.
    assert all(s.strip() == "" for s in run_printed_commands(said["nobatch_auto"]))
    assert client.get_model_config("nobatch_auto").config.backend == "python"
    assert not client.is_model_ready("nobatch_auto_unguarded")
    a = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(add_sub(client, "nobatch_auto", a, a)[0], 2 * a)


def load_commands(stdout: str) -> str:
    """Only the repository-API lines a command printed (not its example inference)."""
    return "\n".join(line for line in stdout.splitlines() if "/v2/repository/models/" in line)


def probe_breakers(server) -> tuple[bool, str]:
    run = cli("probe", "--url", server.grpc_url, "--json", "--timeout", "10")
    report = json.loads(run.stdout)["report"]
    return run.returncode == 0, {c["name"]: c for c in report["checks"]}["breakers"]["reason"]


def test_a_guard_gone_leaves_neither_a_claim_that_blocks_nor_an_open_breaker_that_fails_the_probe(server, repo, client):
    """On a running server: the renamed guard of nobatch_auto (breaker 'nobatch_auto', timeout_ms 800)
    was unguarded above, so its claim is stale; a guard step with other settings loads, trips OPEN on a
    hang and is unloaded while OPEN; then a renamed guard with still other settings takes its place."""
    a = np.arange(4, dtype=np.float32)
    step = cli("guard", "nobatch_auto", "--model-repository", str(repo), "--url", server.grpc_url,
               "--param", "timeout_ms=500", "--param", "failure_threshold=1", "--param", "probe_interval_ms=0")
    assert step.returncode == 0, step.stderr
    assert run_printed_commands(load_commands(step.stdout)) == [""]  # loaded: nothing printed
    np.testing.assert_array_equal(add_sub(client, "nobatch_auto_guard", a, a)[0], 2 * a)
    fault = repo / "nobatch_auto" / "FAULT"
    fault.write_text("hang")
    try:
        error, _ = infer(client, "nobatch_auto_guard", [fp32("INPUT0", a), fp32("INPUT1", a)])
        assert "did not answer within timeout_ms=500" in error.message(), error
    finally:
        fault.unlink(missing_ok=True)  # no active recovery (probe_interval_ms=0): the breaker stays OPEN
    ready, why = probe_breakers(server)
    assert not ready and why == "breaker 'nobatch_auto' OPEN"  # a loaded guard's OPEN breaker fails the probe
    undone = cli("unguard", "nobatch_auto", "--model-repository", str(repo), "--url", server.grpc_url)
    assert undone.returncode == 0, undone.stderr
    assert run_printed_commands(load_commands(undone.stdout)) == [""]  # nobatch_auto_guard unloaded
    # Nothing will call or probe that breaker again once the guard's stub process has ended.
    wait_until(lambda: probe_breakers(server)[0], 20, "the probe ignores the breaker the unloaded guard left")
    ready, why = probe_breakers(server)
    assert why.endswith("'nobatch_auto' OPEN left by a guard no longer loaded: ignored"), why
    renamed = cli("guard", "nobatch_auto", "--rename", "--model-repository", str(repo), "--url", server.grpc_url,
                  "--param", "timeout_ms=2500", "--param", "recovery_ms=1000")
    assert renamed.returncode == 0, renamed.stderr
    assert all(said.strip() == "" for said in run_printed_commands(load_commands(renamed.stdout)))
    assert client.get_model_config("nobatch_auto").config.backend == "guard"
    # The breaker is the upstream's: the new guard takes it OPEN, and its trial after recovery_ms closes it.
    wait_until(lambda: not isinstance(infer(client, "nobatch_auto", [fp32("INPUT0", a), fp32("INPUT1", a)])[0],
                                      InferenceServerException), 20, "nobatch_auto answers through its new guard")
    np.testing.assert_array_equal(add_sub(client, "nobatch_auto", a, a)[0], 2 * a)
