"""Drift monitoring of models that are not digits, and no drift alarm from probes.

One real server serves the demo repository (canary running every 250 ms, its
golden requests through `pipeline`) plus two models of
tests/integration/repos/foreign/, each behind a guard that monitors one
output: `add_sub` (unbatched, two FP32 [4] inputs; OUTPUT0 as `values`, two
guard instances feeding one window) and `tokenize` (a BYTES input; LENGTH
INT32 as `values`). The guards start without references (monitor off, said
in the canary report); references are recorded with `triton-guard drift
record` through the server and taken up without reloading the guards.

The idle check comes first: the canary's golden answers pass through
classifier_guard, whose monitor must leave every one of them out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import wait_until
from tests.integration.conftest import FOREIGN, fast_model_repository, running_server
from triton_guard import defaults
from triton_guard.model_config import read_config, write_config

pytestmark = pytest.mark.integration

IDLE_GOLDEN_RUNS = 25  # x 10 golden digits = 250 answers: more than a window (200)
REFERENCE_ROWS = 400
WINDOW = defaults.DRIFT_WINDOW


def _guard_config(repo: Path, model: str, output: str, instances: int) -> None:
    """MODEL_guard: MODEL's inputs, outputs and batching; drift on `output` (values)."""
    config = read_config(repo / model / "config.pbtxt")
    config.name = f"{model}_guard"
    config.backend = "guard"
    del config.instance_group[:]
    group = config.instance_group.add()
    group.kind = group.KIND_CPU
    group.count = instances
    for key, value in {"upstream_model": model, "timeout_ms": "5000", "drift_output": output,
                       "drift_kind": "values"}.items():
        config.parameters[key].string_value = value
    (repo / config.name / "1").mkdir(parents=True)
    write_config(repo / config.name / "config.pbtxt", config)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drift-any-model")
    repo = fast_model_repository(tmp, canary={"interval_ms": "250", "sample_interval_ms": "250"})
    for model in ("add_sub", "tokenize"):
        shutil.copytree(FOREIGN / model, repo / model, ignore=shutil.ignore_patterns("__pycache__"))
    _guard_config(repo, "add_sub", "OUTPUT0", instances=2)
    _guard_config(repo, "tokenize", "LENGTH", instances=1)
    with running_server(repo, tmp / "tritonserver.log") as server:
        server.repo = repo
        server.tmp = tmp
        yield server


def _metrics(server) -> dict[str, float]:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("triton_guard_drift")}


def _drift_check(server) -> dict:
    done = subprocess.run([sys.executable, "-m", "triton_guard.cli", "probe", "--url", server.grpc_url, "--json"],
                          capture_output=True, text=True, timeout=60)
    report = json.loads(done.stdout)["report"]
    return next(c for c in report["checks"] if c["name"] == "drift")


def _exec_count(server, model: str) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith("nv_inference_exec_count{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _add_sub(client, model: str, a: np.ndarray, b: np.ndarray, **kwargs):
    inputs = []
    for name, array in (("INPUT0", a), ("INPUT1", b)):
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array.astype(np.float32))
        inputs.append(tensor)
    return client.infer(model, inputs, **kwargs)


def _tokenize(client, texts: list[str]):
    tensor = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    return client.infer("tokenize_guard", [tensor])


def _texts(rng, n: int, mean_length: float) -> list[str]:
    return ["x" * max(1, int(k)) for k in rng.normal(mean_length, 3.0, n)]


def test_idle_server_answering_only_probes_keeps_the_drift_alarm_at_zero(server):
    wait_until(lambda: _exec_count(server, "pipeline") >= IDLE_GOLDEN_RUNS, 120,
               f"{IDLE_GOLDEN_RUNS} canary golden runs through pipeline")
    check = wait_until(lambda: (c := _drift_check(server))["value"]["classifier"]["probe_rows_skipped"] >= WINDOW
                       and c, 30, "the classifier's monitor counting the skipped golden answers")
    classifier = check["value"]["classifier"]
    assert classifier["n"] == 0 and classifier["observed_total"] == 0, classifier
    assert classifier["status"] == "filling" and not classifier["alarm"]
    metrics = wait_until(lambda: (m := _metrics(server)).get('triton_guard_drift_alarm{model="classifier"}') is not None
                         and m, 10, "the classifier's drift gauges")
    assert metrics['triton_guard_drift_alarm{model="classifier"}'] == 0.0
    assert metrics['triton_guard_drift_window_fill{model="classifier"}'] == 0.0
    # Monitors configured before their reference exists are off, and say how to record one.
    for model in ("add_sub", "tokenize"):
        entry = check["value"][model]
        assert entry["status"] == "off" and "triton-guard drift record" in check["reason"], check


def _record(server, model: str, output: str, inputs: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "triton_guard.cli", "drift", "record", "--url", server.grpc_url, "--model", model,
         "--output", output, "--kind", "values", "--inputs", str(inputs), "--model-repository", str(server.repo)],
        capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def recorded(server):
    rng = np.random.default_rng(0)
    npz = server.tmp / "add_sub_inputs.npz"
    np.savez(npz, INPUT0=rng.normal(0, 1, (REFERENCE_ROWS, 4)).astype(np.float32),
             INPUT1=rng.normal(0, 1, (REFERENCE_ROWS, 4)).astype(np.float32))
    body = server.tmp / "tokenize_inputs.json"
    texts = _texts(rng, REFERENCE_ROWS, 12.0)
    body.write_text(json.dumps({"inputs": [{"name": "TEXT", "shape": [len(texts), 1], "datatype": "BYTES",
                                            "data": texts}]}))
    results = {"add_sub": _record(server, "add_sub", "OUTPUT0", npz),
               "tokenize": _record(server, "tokenize", "LENGTH", body)}
    # No reload: a guard's monitor picks up a reference recorded after it started.
    wait_until(lambda: all(_drift_check(server)["value"][m]["status"] != "off" for m in ("add_sub", "tokenize")),
               30, "the foreign monitors on with their new references")
    return results


def test_reference_recorded_through_the_server(server, recorded):
    for model, output in (("add_sub", "OUTPUT0"), ("tokenize", "LENGTH")):
        done = recorded[model]
        assert done.returncode == 0, done.stderr
        path = server.repo / model / "drift" / f"{output}.json"
        assert f"wrote {path}" in done.stdout and '"drift_output"' in done.stdout
        document = json.loads(path.read_text())
        assert (document["kind"], document["model"], document["output"], document["rows"]) == (
            "values", model, output, REFERENCE_ROWS)
    assert json.loads((server.repo / "add_sub" / "drift" / "OUTPUT0.json").read_text())["batched"] is False
    refused = _record(server, "add_sub", "NOPE", server.tmp / "add_sub_inputs.npz")
    assert refused.returncode == 1 and "has no output 'NOPE' (outputs: OUTPUT0, OUTPUT1)" in refused.stderr


def test_foreign_models_each_get_their_own_window_verdict_and_label(server, recorded):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    rng = np.random.default_rng(1)
    for _ in range(WINDOW + 20):  # clean: like the reference
        _add_sub(client, "add_sub_guard", rng.normal(0, 1, 4), rng.normal(0, 1, 4))
    for start in range(0, 100, 4):
        _tokenize(client, _texts(rng, 4, 12.0))
    last = {}

    def window_full():
        last["check"] = _drift_check(server)
        value = last["check"]["value"]  # each scorer rewrites its state once a second
        return value["add_sub"]["observed_total"] == WINDOW + 20 and value["tokenize"]["observed_total"] == 100 \
            and last["check"]

    try:
        steady = wait_until(window_full, 30, "every answer in its model's window")
    except AssertionError:
        raise AssertionError(f"answers missing from the windows: {last.get('check')}") from None
    add_sub, tokenize = steady["value"]["add_sub"], steady["value"]["tokenize"]
    # Two guard instances (two stub processes) share one window: every answer counted once.
    assert add_sub["n"] == WINDOW and add_sub["status"] == "ok", add_sub
    assert tokenize["n"] == 100 and tokenize["status"] == "filling", tokenize
    assert set(add_sub["statistics"]) == {"ks_mean_p", "ks_spread_p", "psi_mean"}

    # Answers marked as probes never enter the window, whoever sends them.
    for _ in range(10):
        _add_sub(client, "add_sub_guard", rng.normal(5, 1, 4), rng.normal(5, 1, 4),
                 parameters={defaults.PROBE_PARAMETER: True})
    marked = wait_until(lambda: (c := _drift_check(server))["value"]["add_sub"]["probe_rows_skipped"] >= 10 and c,
                        30, "the marked requests counted as skipped")["value"]["add_sub"]
    assert marked["observed_total"] == WINDOW + 20 and not marked["alarm"]

    for _ in range(WINDOW):  # shifted inputs: sums around 6 instead of 0
        _add_sub(client, "add_sub_guard", rng.normal(3, 1, 4), rng.normal(3, 1, 4))
    metrics = wait_until(lambda: (m := _metrics(server)).get('triton_guard_drift_alarm{model="add_sub"}') == 1.0 and m,
                         30, "add_sub's drift alarm on /metrics")
    assert metrics['triton_guard_drift_score{model="add_sub",statistic="ks_mean_p"}'] < defaults.DRIFT_P_ALARM
    assert metrics['triton_guard_drift_alarm{model="classifier"}'] == 0.0  # each model its own state
    check = _drift_check(server)
    assert check["value"]["add_sub"]["status"] == "alarm" and check["value"]["tokenize"]["status"] == "filling"
    assert "add_sub: row mean distribution shifted" in check["reason"] and "reported only" in check["reason"]
