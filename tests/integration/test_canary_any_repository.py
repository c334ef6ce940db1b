"""The canary on a repository that looks nothing like the digits demo, through a real server.

tests/integration/repos/foreign/ (an unbatched two-input add_sub, a BYTES
tokenize, the add_then_scale ensemble; faults through a FAULT file) has no
canary of its own: `serve` adds the packaged one. Everything goes through the
`triton-guard` command, as a user would: probe with no goldens anywhere, then
`goldens record` for each model, then a wrong answer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import FOREIGN, running_server
from triton_guard import metrics as catalogue
from triton_guard import promtext
from triton_guard.canary.goldens import GOLDEN_SUFFIX, GoldenCase
from triton_guard.server import Ports

pytestmark = pytest.mark.integration

MODELS = ("add_sub", "tokenize", "add_then_scale")
CLI = str(Path(sys.executable).parent / "triton-guard")


def triton_guard(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    copy = tmp_path_factory.mktemp("foreign") / "models"
    shutil.copytree(FOREIGN, copy, ignore=shutil.ignore_patterns("__pycache__", "README.md"))
    return copy


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    assert not (repository / "canary").exists()
    with running_server(repository, tmp_path_factory.mktemp("log") / "tritonserver.log") as server:
        yield server


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    a, b = [1.0, 2.5, -3.0, 0.125], [0.5, 0.5, 4.0, -0.125]
    (folder / "add_sub.json").write_text(json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": a},
        {"name": "INPUT1", "shape": [4], "datatype": "FP32", "data": b},
    ]}))
    (folder / "add_then_scale.json").write_text(json.dumps({"inputs": [
        {"name": "A", "shape": [4], "datatype": "FP32", "data": a},
        {"name": "B", "shape": [4], "datatype": "FP32", "data": b},
    ]}))
    np.savez(folder / "greetings.npz", TEXT=np.array([["hello"], ["gr\u00fc\u00df dich"]]))
    return {"add_sub": folder / "add_sub.json", "add_then_scale": folder / "add_then_scale.json",
            "tokenize": folder / "greetings.npz"}


def probe_json(server) -> dict:
    result = triton_guard("probe", "--url", server.grpc_url, "--json")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return json.loads(result.stdout)


def test_without_goldens_the_probe_checks_the_rest_and_says_no_golden_inference_is_configured(server):
    result = triton_guard("probe", "--url", server.grpc_url)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ready: 9 checks passed"), result.stdout  # overload: docs/overload.md
    assert lines[1].startswith("note: no golden inference configured"), result.stdout
    checks = {c["name"]: c for c in probe_json(server)["report"]["checks"]}
    assert {"golden", "liveness", "headroom", "leak_trend", "stall", "breakers"} <= set(checks)
    assert checks["golden"]["ok"] and checks["golden"]["value"] is None
    # serve adds the canary and the breakers' control model (docs/breaker.md) beside the repository.
    assert set(checks["liveness"]["value"]) == {"add_sub", "tokenize", "scale", "add_then_scale", "canary", "guard_control"}


def test_goldens_recorded_with_the_cli_are_checked_from_the_next_probe(server, repository, inputs):
    for model in MODELS:
        result = triton_guard("goldens", "record", "--url", server.grpc_url, "--model", model,
                              "--inputs", str(inputs[model]), "--model-repository", str(repository))
        assert result.returncode == 0, result.stdout + result.stderr
        recorded = f"recorded golden case '{inputs[model].stem}' of model '{model}' for cpu"
        assert any(line.startswith(recorded) for line in result.stdout.splitlines()), result.stdout
    tokenize = GoldenCase.load(repository / "tokenize" / "goldens" / f"greetings{GOLDEN_SUFFIX}")
    expected = tokenize.expected["cpu"].outputs
    assert expected["UPPER"].value.tolist() == [[b"HELLO"], ["GR\u00dcSS DICH".encode()]]
    assert expected["LENGTH"].value.tolist() == [[5], [9]] and expected["LENGTH"].tolerance == 0.0
    scaled = GoldenCase.load(repository / "add_then_scale" / "goldens" / f"add_then_scale{GOLDEN_SUFFIX}")
    np.testing.assert_array_equal(scaled.expected["cpu"].outputs["SCALED_SUM"].value,
                                  2 * (np.array([1.0, 2.5, -3.0, 0.125]) + np.array([0.5, 0.5, 4.0, -0.125])))

    result = triton_guard("probe", "--url", server.grpc_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "note:" not in result.stdout
    checks = {c["name"]: c for c in probe_json(server)["report"]["checks"]}
    for model in MODELS:
        assert checks[f"golden:{model}"]["ok"], checks[f"golden:{model}"]
        assert checks[f"golden:{model}"]["reason"].endswith("bit-exact")
    assert "golden" not in checks
    check_ok = {(s.labels["check"], s.labels["model"]): s.value
                for s in promtext.fetch(server.metrics_url, 5) if s.name == catalogue.CANARY_CHECK_OK.name}
    assert {check_ok[("golden", m)] for m in MODELS} == {1.0}
    assert check_ok[("liveness", "")] == 1.0


def test_a_wrong_answer_makes_the_probe_not_ready_naming_that_models_golden(server, repository):
    fault = repository / "add_sub" / "FAULT"
    fault.write_text("wrong")  # add_sub answers OUTPUT0 + 1 from its next request
    try:
        result = triton_guard("probe", "--url", server.grpc_url)
        assert result.returncode == 1, result.stdout + result.stderr
        failed = {line.split(": ", 2)[1]: line for line in result.stdout.splitlines()}
        assert set(failed) == {"golden:add_sub", "golden:add_then_scale"}, result.stdout
        assert "OUTPUT0 differs by 1 at [" in failed["golden:add_sub"], result.stdout
        assert "OUTPUT1" not in failed["golden:add_sub"]
        assert "SCALED_SUM differs by 2 at [" in failed["golden:add_then_scale"], result.stdout

        status = triton_guard("status", "--url", server.grpc_url)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "FAIL golden:add_sub" in status.stdout and "ok   golden:tokenize" in status.stdout
        assert "guard counters unavailable" not in status.stdout  # read from this server's metrics port
    finally:
        fault.unlink()
    assert triton_guard("probe", "--url", server.grpc_url).returncode == 0


def test_record_refuses_an_unknown_model_in_one_line(server, repository, inputs):
    result = triton_guard("goldens", "record", "--url", server.grpc_url, "--model", "no_such_model",
                          "--inputs", str(inputs["add_sub"]), "--model-repository", str(repository))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"triton-guard goldens record: refused: the server at {server.grpc_url} has no model 'no_such_model' "
        "(it has: add_sub, add_then_scale, canary, guard_control, scale, tokenize)"]


def test_record_refuses_inputs_the_model_does_not_have(server, repository, inputs):
    result = triton_guard("goldens", "record", "--url", server.grpc_url, "--model", "scale",
                          "--inputs", str(inputs["add_sub"]), "--model-repository", str(repository))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "model 'scale' has no input INPUT0, INPUT1 (its inputs: X)" in result.stderr
    assert not (repository / "scale" / "goldens").exists()


def test_record_says_unreachable_with_exit_2(inputs, tmp_path):
    url = f"localhost:{Ports.free().grpc}"
    result = triton_guard("goldens", "record", "--url", url, "--model", "add_sub",
                          "--inputs", str(inputs["add_sub"]), "--model-repository", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"triton-guard goldens record: error: server at {url} unreachable")
