"""Read and write Triton model configurations with Triton's own protobuf schema.

`config.pbtxt` is protobuf text format for `inference.ModelConfig`;
tritonclient ships the generated module (model_config_pb2), so nothing here
parses pbtxt by hand. Used by `triton-guard guard`, the canary's defaults and
the test and benchmark helpers that copy a repository with other limits.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

ModelConfig = model_config_pb2.ModelConfig
CONFIG_FILE = "config.pbtxt"


class ModelConfigError(ValueError):
    """A config that cannot be read; the message is one line naming the file."""


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


def config_text(config: model_config_pb2.ModelConfig) -> str:
    return text_format.MessageToString(config)


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
