"""The renaming placement, configs from the server, and `unguard` back to the original bytes (no Triton)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from triton_guard.guard_writer import (
    GuardRefused,
    Server,
    unguard,
    write_guard,
    write_in_process,
    write_renamed,
)
from triton_guard.guard_writer.changes import RECORD_DIR, Changes
from triton_guard.model_config import CONFIG_FILE, parameters, read_config
from triton_guard.model_source import NotServed

FOREIGN = Path(__file__).resolve().parents[1] / "integration" / "repos" / "foreign"
# What Triton 2.51 answers for `auto`, a Python model with no config.pbtxt whose model.py completes it.
SERVED = """name: "auto" backend: "python" max_batch_size: 4 dynamic_batching {}
input { name: "INPUT0" data_type: TYPE_FP32 dims: 4 } output { name: "OUTPUT0" data_type: TYPE_FP32 dims: 4 }
instance_group { name: "auto_0" kind: KIND_CPU count: 1 } default_model_filename: "model.py"
"""


def fetch(name: str) -> model_config_pb2.ModelConfig:
    if name != "auto":
        raise NotServed(f"the server at fake:8001 has not loaded it ('{name}')")
    return text_format.Parse(SERVED, model_config_pb2.ModelConfig())


SERVER = Server("fake:8001", fetch)


@pytest.fixture
def repo(tmp_path):
    root = Path(shutil.copytree(FOREIGN, tmp_path / "models"))
    (root / "auto" / "1").mkdir(parents=True)
    (root / "auto" / "1" / "model.py").write_text("# auto_complete_config lives here\n")
    config = root / "add_sub" / CONFIG_FILE
    config.write_text("# add_sub: sum and difference\n" + config.read_text() + "# the end\n")
    os.chmod(config, 0o640)
    return root


def snapshot(root: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every path with its bytes (None for a folder) and mode: what `byte for byte` compares."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None, p.stat().st_mode)
        for p in sorted(root.rglob("*"))
    }


# --- the renaming placement ------------------------------------------------------------------------


def test_renamed_guard_takes_the_name_and_the_model_moves_untouched(repo):
    before = snapshot(repo)
    written = write_renamed(repo, "add_sub", {"timeout_ms": "500"})
    guard = read_config(repo / "add_sub" / CONFIG_FILE)
    assert (guard.name, guard.backend) == ("add_sub", "guard")
    # Calls go to the moved model; the breaker keeps the name clients call.
    assert parameters(guard) == {"timeout_ms": "500", "upstream_model": "add_sub_unguarded", "breaker_name": "add_sub"}
    moved = read_config(repo / "add_sub_unguarded" / CONFIG_FILE)
    assert moved.name == "add_sub_unguarded" and moved.backend == "python"
    # The model's files are as they were; its config differs in the name line only, comments kept.
    assert (repo / "add_sub_unguarded" / "1" / "model.py").read_bytes() == before["add_sub/1/model.py"][0]
    old_text = before[f"add_sub/{CONFIG_FILE}"][0].decode()
    assert (repo / "add_sub_unguarded" / CONFIG_FILE).read_text() == old_text.replace('"add_sub"', '"add_sub_unguarded"', 1)
    assert written.server_steps == [("load", "add_sub_unguarded"), ("load", "add_sub")]
    assert "clients keep calling 'add_sub'" in "\n".join(written.lines())


def test_renamed_model_keeps_goldens_and_drift_under_the_name_clients_call(repo):
    (repo / "add_sub" / "goldens").mkdir()
    (repo / "add_sub" / "goldens" / "a.golden.json").write_text("{}")
    write_renamed(repo, "add_sub", {"drift_output": "OUTPUT0"})
    assert (repo / "add_sub" / "goldens" / "a.golden.json").is_file()
    assert not (repo / "add_sub_unguarded" / "goldens").exists()
    # drift/ follows the name too, so the guard is told where its reference is.
    assert parameters(read_config(repo / "add_sub" / CONFIG_FILE))["drift_reference"] == "add_sub/drift/OUTPUT0.json"


def test_a_model_with_no_config_is_renamed_with_the_servers_interface(repo):
    written = write_renamed(repo, "auto", {}, server=SERVER)
    assert not (repo / "auto_unguarded" / CONFIG_FILE).exists()  # Triton names it after its folder
    guard = read_config(repo / "auto" / CONFIG_FILE)
    assert guard.max_batch_size == 4 and [t.name for t in guard.input] == ["INPUT0"]
    assert guard.HasField("dynamic_batching")
    assert "read 'auto' from the server at fake:8001" in written.lines()[0]


@pytest.mark.parametrize(
    "prepare, reason",
    [
        (lambda r: (r / "add_sub_unguarded").mkdir(), "add_sub_unguarded already exists"),
        (lambda r: write_guard(r, "add_sub", {}), "already guarded by 'add_sub_guard'"),
        (lambda r: write_in_process(r, "add_sub", {}), "already a guard"),
        (lambda r: write_renamed(r, "add_sub", {}), "already a guard"),
    ],
)
def test_renamed_refusals_write_nothing(repo, prepare, reason):
    prepare(repo)
    before = snapshot(repo)
    with pytest.raises(GuardRefused, match=reason):
        write_renamed(repo, "add_sub", {})
    assert snapshot(repo) == before


def test_the_upstream_of_a_renamed_guard_is_not_guarded_again(repo):
    write_renamed(repo, "add_sub", {})
    with pytest.raises(GuardRefused, match="already guarded by 'add_sub'"):
        write_in_process(repo, "add_sub_unguarded", {})


# --- in-process from the server's config -------------------------------------------------------------


def test_in_process_of_a_model_with_no_config_writes_the_servers_interface(repo):
    written = write_in_process(repo, "auto", {"timeout_ms": "500"}, server=SERVER)
    config = read_config(repo / "auto" / CONFIG_FILE)
    assert config.backend == "guard" and config.max_batch_size == 4 and config.HasField("dynamic_batching")
    assert [t.name for t in config.input] == ["INPUT0"] and parameters(config) == {"timeout_ms": "500"}
    assert not config.instance_group  # left to Triton, as before
    assert "with the tensors and batching the server completed" in "\n".join(written.lines())


def test_in_process_keeps_the_comments_of_a_config_it_edits(repo):
    write_in_process(repo, "add_sub", {"timeout_ms": "500"})
    text = (repo / "add_sub" / CONFIG_FILE).read_text()
    assert text.startswith("# add_sub: sum and difference\n") and "# the end\n" in text
    assert read_config(repo / "add_sub" / CONFIG_FILE).backend == "guard"


# --- unguard ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "guard",
    [
        lambda r: write_renamed(r, "add_sub", {"timeout_ms": "500"}),
        lambda r: write_in_process(r, "add_sub", {"timeout_ms": "500"}),
        lambda r: write_guard(r, "add_sub", {"timeout_ms": "500"}, ensemble="add_then_scale"),
        lambda r: write_renamed(r, "auto", {}, server=SERVER),
        lambda r: write_in_process(r, "auto", {}, server=SERVER),
    ],
    ids=["renamed", "in-process", "guard-model+ensemble", "renamed-auto", "in-process-auto"],
)
def test_unguard_restores_every_placement_byte_for_byte(repo, guard):
    before = snapshot(repo)
    written = guard(repo)
    assert snapshot(repo) != before
    model = written.model
    undone = unguard(repo, model)
    assert snapshot(repo) == before
    assert undone.server_steps  # what a running server must do now
    assert f"'{model}' is as it was before" in undone.lines()[-1]


def test_unguard_takes_goldens_recorded_after_guarding_back_with_the_model(repo):
    before = snapshot(repo)
    write_renamed(repo, "add_sub", {})
    (repo / "add_sub" / "goldens").mkdir()  # `goldens record --model add_sub` after guarding
    (repo / "add_sub" / "goldens" / "new.golden.json").write_text("{}")
    unguard(repo, "add_sub")
    assert (repo / "add_sub" / "goldens" / "new.golden.json").read_text() == "{}"
    after = {k: v for k, v in snapshot(repo).items() if not k.startswith("add_sub/goldens")}
    assert after == before


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda r: (r / "add_sub" / CONFIG_FILE).write_text((r / "add_sub" / CONFIG_FILE).read_text() + "\n"),
         f"add_sub/{CONFIG_FILE} was changed since"),
        (lambda r: (r / "add_sub_unguarded" / CONFIG_FILE).unlink(), f"add_sub_unguarded/{CONFIG_FILE} was removed"),
        (lambda r: (r / "add_sub" / "1" / "model.py").write_text(""), "add_sub/1/model.py was added since"),
        (lambda r: r.joinpath("add_sub_unguarded").rename(r / "elsewhere"), "add_sub_unguarded was moved or removed"),
        (lambda r: (r / "add_sub" / RECORD_DIR / "originals").joinpath(
            next((r / "add_sub" / RECORD_DIR / "originals").iterdir()).name).write_text("x"), "missing or damaged"),
    ],
)
def test_unguard_refuses_a_repository_changed_by_hand_and_writes_nothing(repo, change, named):
    write_renamed(repo, "add_sub", {})
    change(repo)
    before = snapshot(repo)
    with pytest.raises(GuardRefused, match=named) as refused:
        unguard(repo, "add_sub")
    assert "\n" not in str(refused.value)
    assert snapshot(repo) == before


def test_unguard_of_a_model_without_a_guard_is_refused(repo):
    with pytest.raises(GuardRefused, match="no guard of 'add_sub' written by `triton-guard guard`"):
        unguard(repo, "add_sub")


def test_a_guard_that_cannot_be_written_leaves_nothing(repo):
    changes = Changes(repo, "add_sub", "renamed", record_dir=f"add_sub/{RECORD_DIR}")
    changes.rename("add_sub", "add_sub_unguarded")
    changes.mkdir("add_sub")
    changes.write("no_such_folder/config.pbtxt", "x")  # fails: the first two steps are undone
    before = snapshot(repo)
    with pytest.raises(GuardRefused, match="cannot write .*no_such_folder.*nothing was changed"):
        changes.apply("test")
    assert snapshot(repo) == before
