"""Read and write Triton model configurations with Triton's own protobuf schema.

`config.pbtxt` is protobuf text format for `inference.ModelConfig`;
tritonclient ships the generated module (model_config_pb2), so nothing here
parses pbtxt by hand. Used by `triton-guard guard`, the canary's defaults and
the test and benchmark helpers that copy a repository with other limits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from triton_guard import defaults
from triton_guard.errors import ModelConfigError

ModelConfig = model_config_pb2.ModelConfig
CONFIG_FILE = "config.pbtxt"


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    """Parse `path` (a config.pbtxt) into a ModelConfig, or raise ModelConfigError naming it."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ModelConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelConfigError(f"{path}: not a valid model config: {exc}") from None


# Printed first, in this order, so a person reads what the model is before its details.
_LEADING_FIELDS = ("name", "platform", "backend", "max_batch_size")


def _entries(config: model_config_pb2.ModelConfig, field, value):
    """One ModelConfig per entry of a set field (each tensor, each parameter...), holding only it."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        for key in sorted(value):
            one = model_config_pb2.ModelConfig()
            getattr(one, field.name)[key].CopyFrom(value[key])
            yield one
    elif field.label == field.LABEL_REPEATED:
        for entry in value:
            one = model_config_pb2.ModelConfig()
            if field.message_type is None:
                getattr(one, field.name).append(entry)
            else:
                getattr(one, field.name).add().CopyFrom(entry)
            yield one
    else:
        one = model_config_pb2.ModelConfig()
        if field.message_type is None:
            setattr(one, field.name, value)
        else:
            getattr(one, field.name).CopyFrom(value)
        yield one


def config_text(config: model_config_pb2.ModelConfig) -> str:
    """Protobuf text format with one line per entry (each tensor, each parameter...), as people write it.

    max_batch_size is always written: 0 (unbatched) is what a reader needs to see.
    """
    fields = {field.name: (field, value) for field, value in config.ListFields()}
    fields.setdefault("max_batch_size", None)
    order = [n for n in _LEADING_FIELDS if n in fields] + [n for n in fields if n not in _LEADING_FIELDS]
    lines = []
    for name in order:
        field, value = fields[name] if fields[name] else (None, None)
        if field is None:
            lines.append(f"{name}: 0")
            continue
        if name == "ensemble_scheduling" and list(value.ListFields()) == [(value.DESCRIPTOR.fields_by_name["step"], value.step)]:
            # An ensemble reads as its steps: one line each.
            steps = [text_format.MessageToString(step, as_one_line=True) for step in value.step]
            lines.extend(["ensemble_scheduling {", *(f"  step {{ {step} }}" for step in steps), "}"])
            continue
        lines.extend(text_format.MessageToString(one, as_one_line=True) for one in _entries(config, field, value))
    return "\n".join(lines) + "\n"


def write_config(path: Path, config: model_config_pb2.ModelConfig, header: str = "") -> None:
    Path(path).write_text(header + config_text(config))


def parameters(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    """The `parameters` map as plain strings (Triton hands backends the same)."""
    return {key: value.string_value for key, value in config.parameters.items()}


def set_parameters(path: Path, params: dict[str, object]) -> None:
    """Replace or add `parameters` entries of the config at `path`, in place."""
    config = read_config(path)
    for key, value in params.items():
        config.parameters[key].string_value = str(value)
    write_config(path, config)


def config_from_json(text: str) -> model_config_pb2.ModelConfig:
    """The ModelConfig of a backend's `args["model_config"]` (Triton's JSON form of the same message)."""
    try:
        return json_format.Parse(text, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise ModelConfigError(f"not a valid model config: {exc}") from None


def type_name(data_type: int) -> str:
    """TYPE_FP32 for DataType.TYPE_FP32's number."""
    return model_config_pb2.DataType.Name(data_type)


def tensor_text(tensor) -> str:
    """'TYPE_FP32 [4]' for a ModelInput or ModelOutput."""
    return f"{type_name(tensor.data_type)} [{', '.join(str(d) for d in tensor.dims)}]"


def _dims_compatible(a, b) -> bool:
    # -1 is a variable dimension: it accepts whatever the other side declares.
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b))


def _full_shape(config, tensor) -> list[int]:
    # A batching model's tensors carry a leading batch dimension not written in dims.
    return ([-1] if config.max_batch_size > 0 else []) + list(tensor.dims)


def interface_mismatch(
    guard: model_config_pb2.ModelConfig,
    upstream: model_config_pb2.ModelConfig,
    guard_only_inputs: frozenset[str] = frozenset(),
) -> str | None:
    """Why `guard` cannot pass its requests to `upstream` unchanged, naming the tensor; None when it can.

    The guard hands its inputs to the upstream as they came and asks for its
    outputs by name: every guard input must be an upstream input of the same
    type and shape (save `guard_only_inputs`, which the guard consumes), every
    required upstream input must be declared by the guard, and every guard
    output must be an upstream output of the same type and shape. A batching
    guard sends whole batches, so the upstream must batch at least as many.
    """
    up = upstream.name or "upstream"
    if guard.max_batch_size > 0 and upstream.max_batch_size < guard.max_batch_size:
        batches = f"max_batch_size {upstream.max_batch_size}" if upstream.max_batch_size else "does not batch"
        return (
            f"max_batch_size {guard.max_batch_size} but upstream '{up}' {batches}: "
            f"use the upstream's max_batch_size ({upstream.max_batch_size})"
        )
    upstream_inputs = {t.name: t for t in upstream.input}
    upstream_outputs = {t.name: t for t in upstream.output}
    for kind, tensors, theirs in (("input", guard.input, upstream_inputs), ("output", guard.output, upstream_outputs)):
        for tensor in tensors:
            if kind == "input" and tensor.name in guard_only_inputs:
                continue
            other = theirs.get(tensor.name)
            if other is None:
                return f"{kind} '{tensor.name}' is not an {kind} of upstream '{up}' (it has {sorted(theirs)})"
            if tensor.data_type != other.data_type or not _dims_compatible(
                _full_shape(guard, tensor), _full_shape(upstream, other)
            ):
                batching = lambda c: "batched" if c.max_batch_size > 0 else "unbatched"  # noqa: E731
                return (
                    f"{kind} '{tensor.name}' is {tensor_text(tensor)} ({batching(guard)}) but upstream '{up}' "
                    f"declares {tensor_text(other)} ({batching(upstream)})"
                )
    declared = {t.name for t in guard.input}
    for tensor in upstream.input:
        if tensor.name not in declared and not tensor.optional:
            return f"input '{tensor.name}' of upstream '{up}' is required but the guard does not declare it"
    return None


def check_guard_interface(
    guard_dir: str | Path, guard_config_json: str, upstream: str, environ: Mapping[str, str] | None = None
) -> str | None:
    """At a guard's load: raise ModelConfigError naming the tensor its upstream would refuse.

    Reads the upstream's config.pbtxt from disk, beside the guard's own model
    directory (Triton's `args["model_repository"]`). When that file does not
    declare the upstream's tensors (no file: the upstream's config is
    completed at load, or it lives in another repository), asks the server
    (defaults.HTTP_URL_ENV) for the upstream's completed config. The upstream
    may load after the guard (and at start-up Triton answers HTTP only after
    its first loads): then the check runs on a thread once the server has it,
    and a mismatch is logged in the server's log instead of failing this load.
    Returns what was not checked, for the log, or None when the interfaces match.
    `configs/*.pbtxt` alternatives are taken to declare the same tensors.
    """
    from triton_guard import model_source

    environ = os.environ if environ is None else environ
    repository = Path(guard_dir).parent
    path = repository / upstream / CONFIG_FILE
    guard = config_from_json(guard_config_json)
    try:
        on_disk = read_config(path) if path.is_file() else None
    except ModelConfigError as exc:
        return f"inputs and outputs not checked against upstream '{upstream}': {exc}"
    if model_source.declares_tensors(on_disk):
        _raise_on_mismatch(guard, on_disk, upstream, f"its upstream's {path}")
        return None
    why = model_source.why_not_on_disk(repository, upstream, on_disk)
    http_url = environ.get(defaults.HTTP_URL_ENV)
    if not http_url:
        return f"inputs and outputs not checked against upstream '{upstream}': {why} and ${defaults.HTTP_URL_ENV} is unset"
    fetch = model_source.http_fetcher(http_url, defaults.GUARD_INTERFACE_HTTP_TIMEOUT_S)
    served_by = f"upstream '{upstream}' as the server completed it ({why})"

    def compare(served) -> None:
        _raise_on_mismatch(guard, model_source.completed(on_disk, served), upstream, served_by)

    try:
        served = fetch(upstream)
    except model_source.NotServed:
        served = None
    except ModelConfigError as exc:
        return f"inputs and outputs not checked against upstream '{upstream}': {exc}"
    if served is not None:
        compare(served)  # a mismatch fails this load
        return None

    def later(served) -> None:
        try:
            compare(served)
        except ModelConfigError as exc:
            model_source.log_line(f"error: guard model '{guard.name}' {exc}: its calls will fail")
            return
        model_source.log_line(f"guard model '{guard.name}': inputs and outputs match {served_by}")

    def gave_up(reason: str) -> None:
        model_source.log_line(f"guard model '{guard.name}': inputs and outputs not checked against upstream '{upstream}': {reason}")

    model_source.watch_in_background(fetch, upstream, later, gave_up, defaults.GUARD_INTERFACE_WAIT_S)
    return (f"inputs and outputs of upstream '{upstream}' are checked once the server has loaded it ({why}); "
            "a mismatch is logged then")


def _raise_on_mismatch(guard, upstream_config, upstream: str, against: str) -> None:
    upstream_config.name = upstream_config.name or upstream
    mismatch = interface_mismatch(guard, upstream_config, frozenset({defaults.ARRIVAL_INPUT}))
    if mismatch:
        raise ModelConfigError(f"does not match {against}: {mismatch}")
