"""`triton-guard guard --all`: the placement per backend, the skips with their reasons, the table, --dry-run (no Triton)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from triton_guard.guard_writer import GuardRefused, Server, apply_all, plan_all, server_steps, table, unguard, write_renamed
from triton_guard.model_config import CONFIG_FILE, read_config
from triton_guard.model_source import NotServed

FOREIGN = Path(__file__).resolve().parents[1] / "integration" / "repos" / "foreign"
SERVED = {
    "auto": 'name: "auto" backend: "python" max_batch_size: 4 dynamic_batching {} '
            'input { name: "X" data_type: TYPE_FP32 dims: 4 } output { name: "Y" data_type: TYPE_FP32 dims: 4 }',
    "streamer": 'name: "streamer" backend: "python" model_transaction_policy { decoupled: true } '
                'input { name: "X" data_type: TYPE_FP32 dims: 1 } output { name: "Y" data_type: TYPE_FP32 dims: 1 }',
}
ONNX = """name: "detector"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [{ name: "IMAGE", data_type: TYPE_FP32, dims: [3, 32, 32] }]
output [{ name: "BOXES", data_type: TYPE_FP32, dims: [-1, 4] }]
"""


def fetch(name: str) -> model_config_pb2.ModelConfig:
    if name not in SERVED:
        raise NotServed(f"the server at fake:8001 has not loaded it ('{name}')")
    return text_format.Parse(SERVED[name], model_config_pb2.ModelConfig())


SERVER = Server("fake:8001", fetch)


@pytest.fixture
def repo(tmp_path):
    root = Path(shutil.copytree(FOREIGN, tmp_path / "models"))
    for name in ("auto", "streamer", "broken"):  # Python models whose model.py completes the config
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text("")
    (root / "detector" / "1").mkdir(parents=True)
    (root / "detector" / CONFIG_FILE).write_text(ONNX)
    (root / "counter" / "1").mkdir(parents=True)
    (root / "counter" / CONFIG_FILE).write_text(ONNX.replace("detector", "counter") + "sequence_batching {}\n")
    (root / "canary" / "1").mkdir(parents=True)
    (root / "canary" / CONFIG_FILE).write_text('name: "canary"\nbackend: "canary"\n')
    (root / "notes").mkdir()  # not a model: no config, no version folder
    return root


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def rows_by_model(rows):
    return {row.model: row for row in rows}


def test_every_model_gets_the_placement_of_its_backend_or_a_reason(repo):
    rows = rows_by_model(plan_all(repo, {"timeout_ms": "500"}, SERVER, "triton-guard guard --all"))
    assert set(rows) == {"add_sub", "add_then_scale", "auto", "broken", "canary", "counter", "detector", "scale",
                         "streamer", "tokenize"}  # not "notes"
    placed = {name: row.placement for name, row in rows.items() if row.plan}
    assert placed == {"add_sub": "in-process", "auto": "in-process", "scale": "in-process", "tokenize": "in-process",
                      "detector": "renamed"}
    assert rows["auto"].config_from == "server" and rows["add_sub"].config_from == "config.pbtxt"
    assert rows["add_then_scale"].note.startswith("an ensemble")
    assert rows["streamer"].note == "decoupled" and rows["counter"].note.startswith("stateful")
    assert rows["canary"].note.startswith("the canary")
    assert "has not loaded it" in rows["broken"].note and not rows["broken"].plan


def test_dry_run_prints_the_table_and_writes_nothing(repo):
    before = snapshot(repo)
    rows = plan_all(repo, {}, SERVER, "triton-guard guard --all --dry-run")
    lines = table(rows, dry_run=True)
    assert snapshot(repo) == before
    assert lines[0].split() == ["MODEL", "BACKEND", "CONFIG", "FROM", "RESULT"]
    by_model = {line.split()[0]: line for line in lines[1:]}
    assert "would guard renamed: the guard is 'detector', the model 'detector_unguarded'" in by_model["detector"]
    assert "skipped: decoupled" in by_model["streamer"]
    # The columns line up: every result starts under RESULT.
    start = lines[0].index("RESULT")
    assert all(line[start:].startswith(("would guard", "skipped")) for line in lines[1:])


def test_apply_writes_what_was_planned_and_unguard_undoes_each(repo):
    before = snapshot(repo)
    rows = plan_all(repo, {"timeout_ms": "500"}, SERVER, "triton-guard guard --all")
    apply_all(rows, "triton-guard guard --all")
    assert read_config(repo / "detector" / CONFIG_FILE).backend == "guard"
    assert read_config(repo / "detector_unguarded" / CONFIG_FILE).platform == "onnxruntime_onnx"
    assert read_config(repo / "auto" / CONFIG_FILE).backend == "guard"
    # A server loads the moved model before the guard that takes its name.
    steps = server_steps(rows)
    assert steps.index(("load", "detector_unguarded")) < steps.index(("load", "detector"))
    for row in rows:
        if row.guarded:
            unguard(repo, row.model)
    assert snapshot(repo) == before


def test_a_second_run_skips_what_the_first_guarded(repo):
    apply_all(plan_all(repo, {}, SERVER, "triton-guard guard --all"), "triton-guard guard --all")
    rows = rows_by_model(plan_all(repo, {}, SERVER, "triton-guard guard --all"))
    assert not any(row.plan for row in rows.values())
    assert rows["detector"].note == "already guarded (renamed)"
    assert rows["detector_unguarded"].note == "already guarded by 'detector'"
    assert rows["add_sub"].note == "already guarded (in-process)"


def test_a_model_guarded_by_hand_before_is_skipped(repo):
    write_renamed(repo, "scale", {})
    rows = rows_by_model(plan_all(repo, {}, SERVER, "triton-guard guard --all"))
    assert rows["scale_unguarded"].note == "already guarded by 'scale'" and not rows["scale"].plan


def test_bad_parameters_refuse_the_whole_run(repo):
    before = snapshot(repo)
    with pytest.raises(GuardRefused, match="unknown guard parameter"):
        plan_all(repo, {"timeout": "5"}, SERVER, "triton-guard guard --all")
    assert snapshot(repo) == before
