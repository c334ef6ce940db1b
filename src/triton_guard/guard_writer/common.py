"""What every placement of `triton-guard guard` shares: refusals, parameters, the model's config, the guard's config.

A model's config comes from its config.pbtxt, or from the running server
when the file does not declare its tensors (triton_guard.model_source). The
guard model a placement writes copies exactly the model's interface;
`dynamic_batching_settings` is the one place that decides the batching block
of every config `guard` writes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from triton_guard import config_edit, defaults, model_source
from triton_guard.errors import GuardRefused
from triton_guard.guard.config import ConfigError, validate_parameters
from triton_guard.model_config import CONFIG_FILE, ModelConfigError, read_config, tensor_text, type_name
from triton_guard.queue_policy import recommended_dynamic_batching

GUARD_BACKEND = "guard"
PYTHON_BACKEND = "python"
ENSEMBLE_PLATFORM = "ensemble"
GUARD_SUFFIX = "_guard"  # the guard-model placement: clients call MODEL_guard
UNGUARDED_SUFFIX = "_unguarded"  # the renaming placement: MODEL moves here, the guard takes its name
UPSTREAM_PARAMETER = "upstream_model"
GUARD_VERSION = "1"  # Triton loads a model only from a numbered version directory

# Placements, as the record and the --all table name them.
GUARD_MODEL = "guard model"
IN_PROCESS = "in-process"
RENAMED = "renamed"


@dataclass(frozen=True)
class Server:
    """The running server asked for configs the repository does not declare (None fetch: none to ask)."""

    url: str
    fetch: model_source.Fetch | None

    @classmethod
    def at(cls, url: str, timeout_s: float = 10.0) -> "Server":
        return cls(url, model_source.grpc_fetcher(url, timeout_s))


NO_SERVER = Server("(no server)", None)


@dataclass
class Written:
    """What a placement wrote (or would write), how to call it, and what a running server must do to load it."""

    model: str
    placement: str
    wrote: list[str] = field(default_factory=list)
    call: list[str] = field(default_factory=list)
    # ("load" | "unload", model name), in the order a running server must do them.
    server_steps: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def starting(cls, model: str, placement: str, source: model_source.ModelSource) -> "Written":
        """Nothing written yet; a config from the running server says so first."""
        written = cls(model, placement)
        if source.from_server:
            written.wrote.append(source_line(source))
        return written

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


def settings_text(params: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "all defaults"


def model_dirs(repository: Path) -> list[Path]:
    """The folders of a repository Triton takes for models (a config.pbtxt, or a numbered version folder)."""
    return sorted(
        p for p in Path(repository).iterdir()
        if p.is_dir() and ((p / CONFIG_FILE).is_file() or any(v.is_dir() and v.name.isdigit() for v in p.iterdir()))
    )


def check_repository(repository: Path) -> None:
    if not Path(repository).is_dir():
        raise GuardRefused(f"model repository {repository} does not exist or is not a directory")


def guarded_by(repository: Path, model: str) -> str | None:
    """Why MODEL already has a guard (which one), or None."""
    from triton_guard.guard_writer.changes import record_of

    record = record_of(Path(repository) / model)
    if record is not None:
        return f"already guarded ({record['placement']})"
    if (Path(repository) / (model + GUARD_SUFFIX)).exists():
        return f"already guarded by '{model + GUARD_SUFFIX}'"
    for other in model_dirs(repository):
        try:
            config = read_config(other / CONFIG_FILE) if (other / CONFIG_FILE).is_file() else None
        except ModelConfigError:
            continue
        if config is not None and config.backend == GUARD_BACKEND and UPSTREAM_PARAMETER in config.parameters:
            if config.parameters[UPSTREAM_PARAMETER].string_value == model:
                return f"already guarded by '{other.name}'"
    return None


def refuse_if_guarded(repository: Path, model: str) -> None:
    """GuardRefused when MODEL already has a guard: one guard per model, `unguard` first."""
    already = guarded_by(repository, model)
    if already:
        raise GuardRefused(f"model '{model}' is {already}: `triton-guard unguard {model}` first")


def model_config(repository: Path, model: str, server: Server) -> model_source.ModelSource:
    """MODEL's complete config (file or server), refused when a guard cannot serve the model."""
    repository = Path(repository)
    check_repository(repository)
    model_dir = repository / model
    if not model_dir.is_dir():
        models = [p.name for p in model_dirs(repository)]
        raise GuardRefused(f"unknown model '{model}': {repository} holds {', '.join(models) or 'no model'}")
    try:
        source = model_source.resolve(repository, model, server.fetch, server.url)
    except ModelConfigError as exc:
        raise GuardRefused(str(exc)) from None
    config = source.config
    if source.on_disk is not None and source.on_disk.name and source.on_disk.name != model:
        raise GuardRefused(f"{model_dir / CONFIG_FILE} names the model '{source.on_disk.name}', not '{model}' (its directory)")
    if config.backend == GUARD_BACKEND:
        raise GuardRefused(f"model '{model}' is already a guard (backend \"{GUARD_BACKEND}\")")
    reason = unguardable(config)
    if reason:
        raise GuardRefused(f"model '{model}' is {reason}")
    return source


def prepared(
    repository: Path, model: str, params: Mapping[str, str], server: Server
) -> tuple[Path, dict[str, str], model_source.ModelSource]:
    """What every placement starts from: the repository, the checked parameters, MODEL's complete config."""
    params = checked_params(params)
    return Path(repository), params, model_config(repository, model, server)


def unguardable(config: model_config_pb2.ModelConfig) -> str | None:
    """Why no guard fits this model (a phrase after "is"), or None."""
    if config.HasField("sequence_batching"):
        return "stateful (sequence_batching): a guard would not keep its sequences together"
    if config.model_transaction_policy.decoupled:
        return "decoupled: the guard answers one response per request"
    return None


def source_line(source: model_source.ModelSource) -> str:
    return f"read '{source.name}' from {source.source}"


def config_header(command: str, what: str, model: str, repository: Path, *notes: str) -> str:
    """The comment lines on top of a config `guard` writes whole: the command and what it did, notes, how to undo it."""
    lines = [f"# Written by `{command}`: {what}.", *(f"# {note}" for note in notes)]
    lines.append(f"# Undo: triton-guard unguard {model} --model-repository {repository}")
    return "\n".join(lines) + "\n"


def comments_note(original: str, kept: bool) -> str:
    """What the line about a rewritten config adds when the rewrite lost `original`'s comments (else "")."""
    return "" if kept or not config_edit.has_comments(original) else " (its comments are not kept; unguard restores them)"


def dynamic_batching_settings(
    placement: str, model: model_config_pb2.ModelConfig
) -> model_config_pb2.ModelDynamicBatching | None:
    """The dynamic_batching block of a config `guard` writes for `model`; None: the config has none.

    The one place for these settings: triton_guard.queue_policy's
    recommendation. A guard model batches when its model does: each dynamic
    batch becomes one BLS call. In-process, the model keeps its own batching
    less any queue policy or priority levels: on Triton 2.51 those stop the
    batcher prefetching and a full queue then stalls (docs/overload.md); the
    guard's deadline bounds the wait instead.
    """
    if placement == IN_PROCESS:
        return recommended_dynamic_batching(model.dynamic_batching) if model.HasField("dynamic_batching") else None
    return recommended_dynamic_batching() if model.max_batch_size > 0 else None


def guard_config(
    guard_name: str, upstream_name: str, upstream: model_config_pb2.ModelConfig, params: Mapping[str, str],
    placement: str = GUARD_MODEL,
) -> model_config_pb2.ModelConfig:
    """A `guard` model config with exactly `upstream`'s inputs, outputs and max_batch_size."""
    config = model_config_pb2.ModelConfig(name=guard_name, backend=GUARD_BACKEND, max_batch_size=upstream.max_batch_size)
    for tensors, copies in ((upstream.input, config.input), (upstream.output, config.output)):
        for tensor in tensors:
            copy = copies.add()
            copy.CopyFrom(tensor)
            # The guard passes tensors on as clients sent them; the upstream reshapes.
            copy.ClearField("reshape")
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=defaults.GUARD_INSTANCE_COUNT)
    batching = dynamic_batching_settings(placement, upstream)
    if batching is not None:
        config.dynamic_batching.CopyFrom(batching)
    config.parameters[UPSTREAM_PARAMETER].string_value = upstream_name
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def tensors_text(config: model_config_pb2.ModelConfig) -> str:
    return "; ".join(
        [f"input {t.name} {tensor_text(t)}" for t in config.input] + [f"output {t.name} {tensor_text(t)}" for t in config.output]
    )


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


def curl_infer(model: str, config: model_config_pb2.ModelConfig, http: str = f"localhost:{defaults.HTTP_PORT}") -> str:
    return f"curl -s {http}/v2/models/{model}/infer -d '{json.dumps(example_request(config))}'"
