"""`triton-guard guard`: put a guard in front of a model of any repository, from its config alone.

Two placements (docs/guarding.md, docs/placements.md):

* a separate guard model, `DIR/MODEL_guard`, with exactly MODEL's inputs,
  outputs and batching, calling MODEL through BLS (`write_guard`); with an
  ensemble name, the ensemble's steps that call MODEL go through it instead;
* in-process (`write_in_process`): a Python MODEL's own config says
  `backend: "guard"`, so its model.py runs behind the guard in its own stub.

Everything is checked before anything is written: a refusal (GuardRefused,
one line) leaves the repository as it was. Parameters go through
`validate_parameters`, the code the guard backend runs at load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from triton_guard import defaults
from triton_guard.guard.config import ConfigError, validate_parameters
from triton_guard.model_config import (
    CONFIG_FILE,
    ModelConfigError,
    read_config,
    tensor_text,
    type_name,
    write_config,
)

GUARD_BACKEND = "guard"
GUARD_SUFFIX = "_guard"
UPSTREAM_PARAMETER = "upstream_model"
PYTHON_BACKEND = "python"
GUARD_VERSION = "1"  # Triton loads a model only from a numbered version directory


class GuardRefused(ValueError):
    """`triton-guard guard` will not write; the message is one line and nothing was written."""


@dataclass
class Written:
    """What a placement wrote and how to call it, as lines for a person."""

    wrote: list[str] = field(default_factory=list)
    call: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [*self.wrote, *self.call]


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    """{KEY: VALUE} from `--param KEY=VALUE` arguments; a malformed or repeated one is refused."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise GuardRefused(f"--param {pair!r}: expected KEY=VALUE, e.g. timeout_ms=2000")
        if key in params:
            raise GuardRefused(f"--param {key} given twice")
        params[key] = value.strip()
    return params


def checked_params(params: Mapping[str, str]) -> dict[str, str]:
    if UPSTREAM_PARAMETER in params:
        raise GuardRefused(f"--param {UPSTREAM_PARAMETER}: set by the command (the model guarded), not a parameter")
    try:
        validate_parameters(params)
    except ConfigError as exc:
        raise GuardRefused(f"bad guard parameter: {exc}") from None
    return dict(params)


def _model_config(repository: Path, model: str, need_interface: bool = True) -> model_config_pb2.ModelConfig:
    if not repository.is_dir():
        raise GuardRefused(f"model repository {repository} does not exist or is not a directory")
    model_dir = repository / model
    if not model_dir.is_dir():
        models = sorted(p.name for p in repository.iterdir() if (p / CONFIG_FILE).is_file())
        raise GuardRefused(f"unknown model '{model}': {repository} holds {', '.join(models) or 'no model'}")
    if not (model_dir / CONFIG_FILE).is_file():
        raise GuardRefused(
            f"model '{model}' has no {CONFIG_FILE} in {model_dir}: the guard copies its inputs and outputs from it"
        )
    try:
        config = read_config(model_dir / CONFIG_FILE)
    except ModelConfigError as exc:
        raise GuardRefused(str(exc)) from None
    if config.name and config.name != model:
        raise GuardRefused(f"{model_dir / CONFIG_FILE} names the model '{config.name}', not '{model}' (its directory)")
    if config.backend == GUARD_BACKEND:
        raise GuardRefused(f"model '{model}' is already a guard (backend \"{GUARD_BACKEND}\")")
    if need_interface and (not config.input or not config.output):
        raise GuardRefused(
            f"{model_dir / CONFIG_FILE} declares no {'inputs' if not config.input else 'outputs'} "
            "(its backend may auto-complete them at load): declare them, the guard copies them"
        )
    if config.HasField("sequence_batching"):
        raise GuardRefused(f"model '{model}' is stateful (sequence_batching): a guard would not keep its sequences together")
    if config.model_transaction_policy.decoupled:
        raise GuardRefused(f"model '{model}' is decoupled: the guard answers one response per request")
    return config


def guard_config(
    model: str, upstream: model_config_pb2.ModelConfig, params: Mapping[str, str]
) -> model_config_pb2.ModelConfig:
    """A `guard` model config with exactly `upstream`'s inputs, outputs and max_batch_size."""
    config = model_config_pb2.ModelConfig(
        name=model + GUARD_SUFFIX, backend=GUARD_BACKEND, max_batch_size=upstream.max_batch_size
    )
    for tensor in upstream.input:
        copy = config.input.add()
        copy.CopyFrom(tensor)
        # The guard passes tensors on as clients sent them; the upstream reshapes.
        copy.ClearField("reshape")
    for tensor in upstream.output:
        copy = config.output.add()
        copy.CopyFrom(tensor)
        copy.ClearField("reshape")
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=defaults.GUARD_INSTANCE_COUNT)
    if upstream.max_batch_size > 0:
        # Each dynamic batch becomes one BLS call; no queue policy (docs/guarding.md).
        config.dynamic_batching.SetInParent()
    config.parameters[UPSTREAM_PARAMETER].string_value = model
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def _ensemble_reroute(repository: Path, ensemble: str, model: str) -> tuple[model_config_pb2.ModelConfig, list[int]]:
    """The ensemble's config with its steps that call `model` calling the guard, and those steps' numbers."""
    if not (repository / ensemble / CONFIG_FILE).is_file():
        raise GuardRefused(f"unknown ensemble '{ensemble}': no {repository / ensemble / CONFIG_FILE}")
    try:
        config = read_config(repository / ensemble / CONFIG_FILE)
    except ModelConfigError as exc:
        raise GuardRefused(str(exc)) from None
    if config.platform != "ensemble":
        raise GuardRefused(f"model '{ensemble}' is not an ensemble (platform \"{config.platform or config.backend}\")")
    steps = [i for i, step in enumerate(config.ensemble_scheduling.step) if step.model_name == model]
    if not steps:
        called = sorted({step.model_name for step in config.ensemble_scheduling.step})
        raise GuardRefused(f"ensemble '{ensemble}' has no step calling '{model}' (its steps call {', '.join(called)})")
    for i in steps:
        step = config.ensemble_scheduling.step[i]
        step.model_name = model + GUARD_SUFFIX
        step.model_version = -1  # the guard has one version
    return config, steps


def example_request(config: model_config_pb2.ModelConfig) -> dict:
    """A KServe v2 JSON request body of zeros (or "text") with the model's inputs, for the printed example."""
    inputs = []
    for tensor in config.input:
        if tensor.optional:
            continue
        shape = ([1] if config.max_batch_size > 0 else []) + [d if d > 0 else 1 for d in tensor.dims]
        count = 1
        for d in shape:
            count *= d
        datatype = type_name(tensor.data_type).removeprefix("TYPE_")
        datatype = "BYTES" if datatype == "STRING" else datatype
        value = "text" if datatype == "BYTES" else (False if datatype == "BOOL" else 0)
        inputs.append({"name": tensor.name, "shape": shape, "datatype": datatype, "data": [value] * count})
    return {"inputs": inputs}


def _curl(model: str, config: model_config_pb2.ModelConfig) -> str:
    body = json.dumps(example_request(config))
    return f"curl -s localhost:{defaults.HTTP_PORT}/v2/models/{model}/infer -d '{body}'"


def write_guard(
    repository: Path, model: str, params: Mapping[str, str], ensemble: str | None = None
) -> Written:
    """Write DIR/MODEL_guard (config and version directory); reroute `ensemble`'s steps through it."""
    repository = Path(repository)
    params = checked_params(params)
    upstream = _model_config(repository, model)
    guard_name = model + GUARD_SUFFIX
    guard_dir = repository / guard_name
    if guard_dir.exists():
        raise GuardRefused(f"{guard_dir} already exists: remove it to write the guard again")
    rerouted = _ensemble_reroute(repository, ensemble, model) if ensemble else None

    config = guard_config(model, upstream, params)
    (guard_dir / GUARD_VERSION).mkdir(parents=True)
    header = f"# Written by `triton-guard guard {model}`: a circuit breaker in front of '{model}'.\n"
    write_config(guard_dir / CONFIG_FILE, config, header)
    written = Written()
    tensors = "; ".join(
        [f"input {t.name} {tensor_text(t)}" for t in config.input] + [f"output {t.name} {tensor_text(t)}" for t in config.output]
    )
    settings = ", ".join(f"{k}={v}" for k, v in params.items()) or "all defaults"
    written.wrote.append(
        f"wrote {guard_dir / CONFIG_FILE}: backend \"{GUARD_BACKEND}\" in front of '{model}' "
        f"(max_batch_size {config.max_batch_size}; {tensors}; {settings})"
    )
    written.wrote.append(f"wrote {guard_dir / GUARD_VERSION}/ (empty: the guard's code is the backend's)")
    if rerouted:
        ensemble_config, steps = rerouted
        path = repository / ensemble / CONFIG_FILE
        had_comments = any(line.lstrip().startswith("#") for line in path.read_text().splitlines())
        write_config(path, ensemble_config)
        written.wrote.append(
            f"rewrote {path}: step{'s' if len(steps) > 1 else ''} {', '.join(str(i + 1) for i in steps)} "
            f"now call{'' if len(steps) > 1 else 's'} '{guard_name}' instead of '{model}'"
            + (" (its comments are not kept)" if had_comments else "")
        )
        written.call.append(f"clients keep calling '{ensemble}'; its calls to '{model}' now go through the guard")
    else:
        written.call.append(f"call '{guard_name}' instead of '{model}' (same inputs and outputs), e.g.")
        written.call.append("  " + _curl(guard_name, config))
    written.call.append(
        "a running server loads it on restart, or now: "
        f"curl -s -H '{defaults.API_KEY_HEADER}: $TRITON_GUARD_API_KEY' -X POST localhost:{defaults.HTTP_PORT}/v2/repository/models/{guard_name}/load"
        + (f" && curl -s -H '{defaults.API_KEY_HEADER}: $TRITON_GUARD_API_KEY' -X POST localhost:{defaults.HTTP_PORT}/v2/repository/models/{ensemble}/load" if ensemble else "")
    )
    return written


def write_in_process(repository: Path, model: str, params: Mapping[str, str]) -> Written:
    """Make a Python MODEL's own config say `backend: "guard"`, with the guard's parameters; nothing else changes."""
    repository = Path(repository)
    params = checked_params(params)
    config = _model_config(repository, model, need_interface=False)
    if config.platform == "ensemble":
        raise GuardRefused(f"model '{model}' is an ensemble: guard its steps, or put a separate guard in front of it")
    if config.backend != PYTHON_BACKEND:
        kind = f"backend \"{config.backend}\"" if config.backend else f"platform \"{config.platform or 'unknown'}\""
        raise GuardRefused(
            f"model '{model}' has {kind}: --in-process guards only Python models "
            f"(backend \"{PYTHON_BACKEND}\"); without --in-process a separate guard fits any model"
        )
    if UPSTREAM_PARAMETER in config.parameters:
        raise GuardRefused(f"model '{model}' already has a parameter '{UPSTREAM_PARAMETER}'")
    config.backend = GUARD_BACKEND
    for key, value in params.items():
        config.parameters[key].string_value = value
    path = repository / model / CONFIG_FILE
    had_comments = any(line.lstrip().startswith("#") for line in path.read_text().splitlines())
    write_config(path, config)
    settings = ", ".join(f"{k}={v}" for k, v in params.items()) or "all defaults"
    written = Written()
    written.wrote.append(
        f"rewrote {path}: backend \"{GUARD_BACKEND}\" (was \"{PYTHON_BACKEND}\"; {settings})"
        + (" (its comments are not kept)" if had_comments else "")
    )
    written.call.append(
        f"its model.py runs behind the guard in the same process; clients keep calling '{model}'"
    )
    written.call.append(
        "a running server picks it up on restart, or now: "
        f"curl -s -H '{defaults.API_KEY_HEADER}: $TRITON_GUARD_API_KEY' -X POST localhost:{defaults.HTTP_PORT}/v2/repository/models/{model}/load"
    )
    return written
