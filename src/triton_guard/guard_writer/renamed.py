"""The renaming placement: the guard takes MODEL's name, MODEL moves to MODEL_unguarded, which only the guard calls.

Clients, ensembles, BLS callers and dashboards keep the name MODEL, whatever
MODEL's backend (ONNX, TensorRT, TorchScript, Python...). The model's folder
is renamed and its config's `name` with it (edited in place, comments kept;
a config that names no model, or no config at all, is left as it is);
version folders and model files are not touched. `goldens/` and `drift/`
belong to the name clients call, so they move to the guard's folder (the
canary checks a folder's goldens against the model of that name).

A running server with explicit model control (what `triton-guard serve`
runs) takes the change without a failed request when it loads
MODEL_unguarded first and then MODEL (which reloads as the guard); the other
order leaves the guard calling a model that is not loaded yet, and its
breaker opens. `unguard` is the reverse: load MODEL (the model again), then
unload MODEL_unguarded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from triton_guard import config_edit, defaults
from triton_guard.guard_writer.changes import CARRIED, RECORD_DIR, Changes, Plan
from triton_guard.guard_writer.common import (
    NO_SERVER,
    RENAMED,
    UNGUARDED_SUFFIX,
    GuardRefused,
    Server,
    Written,
    comments_note,
    guard_config,
    prepared,
    refuse_if_guarded,
)
from triton_guard.guard_writer.guard_model import add_guard_folder
from triton_guard.model_config import CONFIG_FILE


def plan_renamed(
    repository: Path, model: str, params: Mapping[str, str], server: Server = NO_SERVER, command: str = ""
) -> Plan:
    repository, params, source = prepared(repository, model, params, server)
    moved = model + UNGUARDED_SUFFIX
    if (repository / moved).exists():
        raise GuardRefused(f"{repository / moved} already exists: the renaming placement moves '{model}' there")
    refuse_if_guarded(repository, model)
    if "drift_output" in params and "drift_reference" not in params:
        # drift/ moves with the name; the guard's default would look beside the upstream.
        params = {**params, "drift_reference": f"{model}/{defaults.DRIFT_REFERENCE_DIR}/{params['drift_output']}.json"}
    # The breaker, its metrics and messages keep the name clients call, as the dashboards do.
    params = {"breaker_name": model, **params}
    command = command or f"triton-guard guard {model} --rename"
    guard = guard_config(model, moved, source.config, params, RENAMED)

    changes = Changes(repository, model, RENAMED, record_dir=f"{model}/{RECORD_DIR}")
    written = Written.starting(model, RENAMED, source)
    changes.rename(model, moved)
    written.wrote.append(f"renamed {repository / model}/ to {repository / moved}/ (version folders and files as they were)")
    config_path = repository / model / CONFIG_FILE
    if source.on_disk is not None and source.on_disk.name:
        renamed = model_config_pb2.ModelConfig()
        renamed.CopyFrom(source.on_disk)
        renamed.name = moved
        original = config_path.read_text()
        text, kept = config_edit.edited_text(original, renamed, lambda t: config_edit.set_scalar(t, "name", moved))
        changes.write(f"{moved}/{CONFIG_FILE}", text)
        written.wrote.append(
            f"rewrote {repository / moved / CONFIG_FILE}: name \"{moved}\""
            + comments_note(original, kept)
        )
    add_guard_folder(changes, written, model, guard, params, command, f"the guard, named '{model}', in front of '{moved}'")
    changes.carry(moved, model)
    carried = [name for name in CARRIED if (repository / model / name).is_dir()]
    if carried:
        written.wrote.append(f"kept {', '.join(n + '/' for n in carried)} with the name '{model}' (in the guard's folder)")
    written.call.append(f"clients keep calling '{model}' (now the guard); only the guard calls '{moved}'")
    written.server_steps = [("load", moved), ("load", model)]
    return Plan(changes, written, undo_server_steps=[("load", model), ("unload", moved)])


def write_renamed(
    repository: Path, model: str, params: Mapping[str, str], server: Server = NO_SERVER, command: str = ""
) -> Written:
    """Put a guard under MODEL's name and move MODEL to MODEL_unguarded. GuardRefused: nothing written."""
    command = command or f"triton-guard guard {model} --rename"
    return plan_renamed(repository, model, params, server, command).apply(command)
