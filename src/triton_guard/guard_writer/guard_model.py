"""The guard-model placement: `DIR/MODEL_guard`, a guard of its own in front of MODEL, that clients call instead.

It has exactly MODEL's inputs, outputs and batching and calls MODEL through
BLS; with an ensemble name, the ensemble's steps that call MODEL go through
it instead (its config edited in place: comments kept), so the ensemble's
clients change nothing. Fits a model of any backend, an ensemble included.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from triton_guard import config_edit
from triton_guard.guard_writer.changes import RECORD_DIR, Changes, Plan
from triton_guard.guard_writer.common import (
    ENSEMBLE_PLATFORM,
    GUARD_MODEL,
    GUARD_SUFFIX,
    GUARD_VERSION,
    NO_SERVER,
    GuardRefused,
    Server,
    Written,
    comments_note,
    config_header,
    curl_infer,
    guard_config,
    prepared,
    refuse_if_guarded,
    settings_text,
    tensors_text,
)
from triton_guard.model_config import CONFIG_FILE, ModelConfigError, config_text, read_config


def add_guard_folder(
    changes: Changes, written: Written, folder: str, config: model_config_pb2.ModelConfig, params: Mapping[str, str],
    command: str, what: str,
) -> None:
    """Plan the guard's own folder (its config, headed by how to undo it, and an empty version folder); say so."""
    repository, model = changes.repository, changes.model
    changes.mkdir(folder)
    changes.mkdir(f"{folder}/{GUARD_VERSION}")
    header = config_header(command, f"a circuit breaker in front of '{model}'", model, repository)
    changes.write(f"{folder}/{CONFIG_FILE}", header + config_text(config))
    written.wrote.append(
        f"wrote {repository / folder / CONFIG_FILE}: {what} "
        f"(max_batch_size {config.max_batch_size}; {tensors_text(config)}; {settings_text(params)})"
    )


def _ensemble_reroute(repository: Path, ensemble: str, model: str) -> tuple[str, model_config_pb2.ModelConfig, list[int]]:
    """(the ensemble's config text, its config with the steps that call `model` calling the guard, those steps)."""
    path = repository / ensemble / CONFIG_FILE
    if not path.is_file():
        raise GuardRefused(f"unknown ensemble '{ensemble}': no {path}")
    try:
        config = read_config(path)
    except ModelConfigError as exc:
        raise GuardRefused(str(exc)) from None
    if config.platform != ENSEMBLE_PLATFORM:
        raise GuardRefused(f"model '{ensemble}' is not an ensemble (platform \"{config.platform or config.backend}\")")
    steps = [i for i, step in enumerate(config.ensemble_scheduling.step) if step.model_name == model]
    if not steps:
        called = sorted({step.model_name for step in config.ensemble_scheduling.step})
        raise GuardRefused(f"ensemble '{ensemble}' has no step calling '{model}' (its steps call {', '.join(called)})")
    for i in steps:
        step = config.ensemble_scheduling.step[i]
        step.model_name = model + GUARD_SUFFIX
        step.model_version = -1  # the guard has one version
    return path.read_text(), config, steps


def plan_guard_model(
    repository: Path, model: str, params: Mapping[str, str], ensemble: str | None = None,
    server: Server = NO_SERVER, command: str = "",
) -> Plan:
    """Plan DIR/MODEL_guard (config and version directory), and `ensemble`'s steps rerouted through it."""
    repository, params, source = prepared(repository, model, params, server)
    guard_name = model + GUARD_SUFFIX
    guard_dir = repository / guard_name
    if guard_dir.exists():
        raise GuardRefused(f"{guard_dir} already exists: remove it to write the guard again")
    refuse_if_guarded(repository, model)
    rerouted = _ensemble_reroute(repository, ensemble, model) if ensemble else None

    config = guard_config(guard_name, model, source.config, params, GUARD_MODEL)
    command = command or f"triton-guard guard {model}"
    changes = Changes(repository, model, GUARD_MODEL, record_dir=f"{guard_name}/{RECORD_DIR}")
    written = Written.starting(model, GUARD_MODEL, source)
    add_guard_folder(changes, written, guard_name, config, params, command, f"backend \"guard\" in front of '{model}'")
    written.wrote.append(f"wrote {guard_dir / GUARD_VERSION}/ (empty: the guard's code is the backend's)")
    plan = Plan(changes, written)
    if rerouted:
        text, ensemble_config, steps = rerouted
        new_text, kept = config_edit.edited_text(
            text, ensemble_config, lambda t: config_edit.rename_references(t, "model_name", model, guard_name)
        )
        changes.write(f"{ensemble}/{CONFIG_FILE}", new_text)
        path = repository / ensemble / CONFIG_FILE
        written.wrote.append(
            f"rewrote {path}: step{'s' if len(steps) > 1 else ''} {', '.join(str(i + 1) for i in steps)} "
            f"now call{'' if len(steps) > 1 else 's'} '{guard_name}' instead of '{model}'"
            + comments_note(text, kept)
        )
        written.call.append(f"clients keep calling '{ensemble}'; its calls to '{model}' now go through the guard")
        written.server_steps = [("load", guard_name), ("load", ensemble)]
        plan.undo_server_steps = [("load", ensemble), ("unload", guard_name)]
    else:
        written.call.append(f"call '{guard_name}' instead of '{model}' (same inputs and outputs), e.g.")
        written.call.append("  " + curl_infer(guard_name, config))
        written.server_steps = [("load", guard_name)]
        plan.undo_server_steps = [("unload", guard_name)]
    return plan


def write_guard(
    repository: Path, model: str, params: Mapping[str, str], ensemble: str | None = None,
    server: Server = NO_SERVER, command: str = "",
) -> Written:
    """Write DIR/MODEL_guard; reroute `ensemble`'s steps through it. GuardRefused: nothing written."""
    command = command or f"triton-guard guard {model}"
    return plan_guard_model(repository, model, params, ensemble, server, command).apply(command)
