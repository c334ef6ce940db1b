"""The in-process placement: a Python MODEL's own config says `backend: "guard"`; its model.py runs behind the guard.

Nothing else of the model changes and clients keep calling MODEL. The config
is edited in place (comments kept): `backend` becomes "guard" and the guard's
parameters are added. The guard backend does not complete a config at load
as the python backend does (`auto_complete_config`), so a model whose file
does not declare its tensors gets those the server completed written in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from triton_guard import config_edit, model_source
from triton_guard.guard_writer.changes import RECORD_DIR, Changes, Plan
from triton_guard.guard_writer.common import (
    ENSEMBLE_PLATFORM,
    GUARD_BACKEND,
    IN_PROCESS,
    NO_SERVER,
    PYTHON_BACKEND,
    UPSTREAM_PARAMETER,
    GuardRefused,
    Server,
    Written,
    comments_note,
    config_header,
    dynamic_batching_settings,
    prepared,
    refuse_if_guarded,
    settings_text,
)
from triton_guard.model_config import CONFIG_FILE
from triton_guard.queue_policy import stall_risks


def _wanted(source: model_source.ModelSource, params: Mapping[str, str]) -> model_config_pb2.ModelConfig:
    wanted = model_config_pb2.ModelConfig()
    wanted.CopyFrom(source.config)
    if source.on_disk is not None and not source.on_disk.name:
        wanted.ClearField("name")  # the file named none: Triton takes the folder's
    wanted.backend = GUARD_BACKEND
    batching = dynamic_batching_settings(IN_PROCESS, source.config)
    wanted.ClearField("dynamic_batching")
    if batching is not None:
        wanted.dynamic_batching.CopyFrom(batching)
    for key, value in params.items():
        wanted.parameters[key].string_value = value
    return wanted


def _edit(source: model_source.ModelSource, wanted, params: Mapping[str, str]):
    """The edit of the file's text that gives `wanted`: None where it cannot be made on the text."""
    on_disk = source.on_disk

    def edit(text: str) -> str | None:
        if on_disk is None or any(key in on_disk.parameters for key in params):
            return None
        text = config_edit.set_scalar(text, "backend", GUARD_BACKEND)
        if text is None:
            return None
        added: list[str] = []
        for field in (*model_source.INTERFACE_FIELDS, *model_source.AUTO_COMPLETED_FIELDS):
            if field == "backend" or config_edit.field_lines(on_disk, field) == config_edit.field_lines(wanted, field):
                continue
            if field == "max_batch_size":
                replaced = config_edit.set_scalar(text, field, wanted.max_batch_size)
                if replaced is not None:
                    text = replaced
                    continue
            elif config_edit.field_lines(on_disk, field):
                return None  # set differently in the file: a whole rewrite says it plainly
            added.extend(config_edit.field_lines(wanted, field))
        only_params = model_config_pb2.ModelConfig()
        for key, value in params.items():
            only_params.parameters[key].string_value = value
        return config_edit.appended(text, added + config_edit.field_lines(only_params, "parameters"))

    return edit


def plan_in_process(
    repository: Path, model: str, params: Mapping[str, str], server: Server = NO_SERVER, command: str = ""
) -> Plan:
    repository, params, source = prepared(repository, model, params, server)
    config = source.config
    if config.platform == ENSEMBLE_PLATFORM:
        raise GuardRefused(f"model '{model}' is an ensemble: guard its steps, or put a separate guard in front of it")
    if config.backend != PYTHON_BACKEND:
        kind = f"backend \"{config.backend}\"" if config.backend else f"platform \"{config.platform or 'unknown'}\""
        raise GuardRefused(
            f"model '{model}' has {kind}: --in-process guards only Python models "
            f"(backend \"{PYTHON_BACKEND}\"); without --in-process a separate guard fits any model"
        )
    if UPSTREAM_PARAMETER in config.parameters:
        raise GuardRefused(f"model '{model}' already has a parameter '{UPSTREAM_PARAMETER}'")
    refuse_if_guarded(repository, model)
    command = command or f"triton-guard guard {model} --in-process"
    path = repository / model / CONFIG_FILE
    original = path.read_text() if path.is_file() else ""
    wanted = _wanted(source, params)
    header = config_header(
        command, f"'{model}' runs behind the guard in its own process", model, repository,
        *([f"Tensors and batching as {source.source}."] if source.from_server else []),
    )
    text, kept = config_edit.edited_text(original, wanted, _edit(source, wanted, params), header)
    changes = Changes(repository, model, IN_PROCESS, record_dir=f"{model}/{RECORD_DIR}")
    changes.write(f"{model}/{CONFIG_FILE}", text)
    written = Written.starting(model, IN_PROCESS, source)
    if source.on_disk is None:
        written.wrote.append(
            f"wrote {path}: backend \"{GUARD_BACKEND}\" with the tensors and batching the server completed "
            f"({settings_text(params)})"
        )
    else:
        written.wrote.append(
            f"rewrote {path}: backend \"{GUARD_BACKEND}\" (was \"{PYTHON_BACKEND}\"; {settings_text(params)})"
            + comments_note(original, kept)
        )
    written.wrote.extend(f"dropped from its dynamic_batching: {risk}" for risk in stall_risks(config))
    written.call.append(f"its model.py runs behind the guard in the same process; clients keep calling '{model}'")
    written.server_steps = [("load", model)]
    return Plan(changes, written, undo_server_steps=[("load", model)])


def write_in_process(
    repository: Path, model: str, params: Mapping[str, str], server: Server = NO_SERVER, command: str = ""
) -> Written:
    """Make a Python MODEL's own config say `backend: "guard"`, with the guard's parameters; nothing else changes."""
    command = command or f"triton-guard guard {model} --in-process"
    return plan_in_process(repository, model, params, server, command).apply(command)
