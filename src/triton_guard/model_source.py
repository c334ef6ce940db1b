"""A model's complete config: its config.pbtxt, or the running server's when the file does not declare it.

Triton completes a config at load: a model with no config.pbtxt, or one that
only names its backend, gets its inputs, outputs and batching from the model
itself (ONNX, TensorRT, TorchScript and TensorFlow files; a Python model's
`auto_complete_config`). The file is then not the truth; the server that
loaded the model is (`GET /v2/models/M/config`, or gRPC ModelConfig). Used by
`triton-guard guard`, `goldens record`, `drift record`, and by a guard's
load-time interface check (model_config.check_guard_interface).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2

from triton_guard import defaults
from triton_guard.errors import NotServed
from triton_guard.model_config import CONFIG_FILE, ModelConfigError, config_from_json, read_config

ModelConfig = model_config_pb2.ModelConfig

# What Triton may fill in at load when the file leaves it out (python_backend's
# auto_complete_config can set exactly these; other backends a subset).
AUTO_COMPLETED_FIELDS = ("backend", "platform", "dynamic_batching", "model_transaction_policy")
# The interface: taken from the server whole when the file does not declare it.
INTERFACE_FIELDS = ("max_batch_size", "input", "output")

# model name -> the server's config of it; raises NotServed or ModelConfigError.
Fetch = Callable[[str], ModelConfig]


def declares_tensors(config: ModelConfig | None) -> bool:
    """Whether a config.pbtxt names the model's inputs and outputs (else Triton completes them at load)."""
    return config is not None and bool(config.input) and bool(config.output)


def completed(on_disk: ModelConfig | None, served: ModelConfig) -> ModelConfig:
    """`on_disk` with the interface the server completed, and what else it filled in where the file says nothing."""
    config = ModelConfig()
    if on_disk is not None:
        config.CopyFrom(on_disk)
    for field in INTERFACE_FIELDS:
        config.ClearField(field)
    config.max_batch_size = served.max_batch_size
    config.input.extend(served.input)
    config.output.extend(served.output)
    for field in AUTO_COMPLETED_FIELDS:
        descriptor = ModelConfig.DESCRIPTOR.fields_by_name[field]
        if descriptor.message_type is not None:
            if not config.HasField(field) and served.HasField(field):
                getattr(config, field).CopyFrom(getattr(served, field))
        elif not getattr(config, field) and getattr(served, field):
            setattr(config, field, getattr(served, field))
    return config


@dataclass(frozen=True)
class ModelSource:
    """Where a model's config came from, and the complete config."""

    name: str
    config: ModelConfig  # complete: inputs, outputs, batching as the server runs the model
    on_disk: ModelConfig | None  # the file's own config (None: the model has no config.pbtxt)
    source: str  # for a person: which file, or which server and why

    @property
    def from_server(self) -> bool:
        return not declares_tensors(self.on_disk)


def why_not_on_disk(repository: Path, model: str, on_disk: ModelConfig | None) -> str:
    path = Path(repository) / model / CONFIG_FILE
    return f"{path} declares no tensors" if on_disk is not None else f"{Path(repository) / model} has no {CONFIG_FILE}"


def resolve(repository: Path, model: str, fetch: Fetch | None, server: str) -> ModelSource:
    """MODEL's complete config: its config.pbtxt when that declares the tensors, else the server's (`fetch`).

    Raises ModelConfigError (one line) when the file does not parse, or does not
    declare the tensors and the server cannot say them.
    """
    path = Path(repository) / model / CONFIG_FILE
    on_disk = read_config(path) if path.is_file() else None
    if declares_tensors(on_disk):
        return ModelSource(model, on_disk, on_disk, str(path))
    why = why_not_on_disk(repository, model, on_disk)
    if fetch is None:
        raise ModelConfigError(f"{why} (Triton completes it at load): name the server that runs '{model}' (--url)")
    try:
        served = fetch(model)
    except ModelConfigError as exc:
        raise ModelConfigError(f"{why} (Triton completes it at load), and {exc}") from None
    config = completed(on_disk, served)
    config.name = config.name or model
    return ModelSource(model, config, on_disk, f"the server at {server} ({why}: completed at load)")


def served_tensors_source(url: str, repository: Path, model: str) -> str:
    """For a tool that takes a model's tensors from the server it calls: where they came from, for a person."""
    path = Path(repository) / model / CONFIG_FILE
    try:
        on_disk = read_config(path) if path.is_file() else None
    except ModelConfigError:
        on_disk = None
    if declares_tensors(on_disk):
        return f"inputs and outputs from the server at {url} (as {path} declares them)"
    return f"inputs and outputs from the server at {url} ({why_not_on_disk(repository, model, on_disk)}: completed at load)"


def grpc_fetcher(url: str, timeout_s: float) -> Fetch:
    """Fetch from a server's gRPC endpoint (what the tools' --url names)."""

    def fetch(model: str) -> ModelConfig:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        try:
            client = grpcclient.InferenceServerClient(url)
        except InferenceServerException as exc:
            raise ModelConfigError(f"the server at {url} cannot be asked: {exc.message()}") from None
        try:
            return client.get_model_config(model, client_timeout=timeout_s).config
        except InferenceServerException as exc:
            status = str(exc.status())
            if status in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"):
                raise NotServed(
                    f"the server at {url} did not answer (start it: triton-guard serve --model-repository DIR)"
                ) from None
            raise NotServed(f"the server at {url} has not loaded it: {exc.message()}") from None
        finally:
            client.close()

    return fetch


def http_fetcher(http_url: str, timeout_s: float) -> Fetch:
    """Fetch from a server's HTTP endpoint (what a stub finds in defaults.HTTP_URL_ENV); plain urllib."""
    base = http_url.rstrip("/")
    if "://" not in base:
        base = "http://" + base

    def fetch(model: str) -> ModelConfig:
        url = f"{base}/v2/models/{model}/config"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as answer:
                body = answer.read().decode("utf-8")
        except urllib.error.HTTPError as exc:  # 400: unknown model, or no version loaded yet
            raise NotServed(f"{url} answered {exc.code}: {exc.read().decode('utf-8', 'replace')[:200]}") from None
        except (urllib.error.URLError, OSError) as exc:  # not listening yet: Triton starts HTTP after its first loads
            raise NotServed(f"{url} did not answer: {getattr(exc, 'reason', exc)}") from None
        try:
            return config_from_json(body)
        except (ModelConfigError, json.JSONDecodeError) as exc:
            raise ModelConfigError(f"{url}: {exc}") from None

    return fetch


def watch_until_served(
    fetch: Fetch,
    model: str,
    on_served: Callable[[ModelConfig], None],
    on_gave_up: Callable[[str], None],
    wait_s: float,
    poll_s: float = defaults.GUARD_INTERFACE_POLL_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Ask for MODEL's config until the server has it (then `on_served(config)`) or `wait_s` passed."""
    deadline = clock() + wait_s
    last = ""
    while True:
        try:
            served = fetch(model)
        except NotServed as exc:
            last = str(exc)
        except ModelConfigError as exc:
            on_gave_up(str(exc))
            return
        else:
            on_served(served)
            return
        if clock() >= deadline:
            on_gave_up(f"not served within {wait_s:g} s ({last})")
            return
        sleep(poll_s)


def watch_in_background(fetch: Fetch, model: str, on_served, on_gave_up, wait_s: float) -> threading.Thread:
    """watch_until_served on a daemon thread (it makes no pb_utils call: safe in a stub at load)."""
    thread = threading.Thread(
        target=watch_until_served, args=(fetch, model, on_served, on_gave_up, wait_s),
        name=f"triton-guard-interface-{model}", daemon=True,
    )
    thread.start()
    return thread


def log_line(message: str) -> None:
    """A line in Triton's log from a stub thread: stderr is the server's (no pb_utils IPC from a thread)."""
    print(f"triton-guard: {message}", file=sys.stderr, flush=True)
