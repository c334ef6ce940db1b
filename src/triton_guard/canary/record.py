"""`triton-guard goldens record`: a model's answers to fixed inputs, recorded as a golden case.

Asks a running server twice (gRPC), refuses answers that differ between the
two calls, and writes `<repository>/<model>/goldens/<case>.golden.json`
(triton_guard.canary.goldens) beside the model, where the canary finds it on
its next run. The server's device class decides which expectations are
written (the others in an existing file with the same inputs are kept): the
one the server's canary reports, or, given --metrics-url or with no canary,
gpu when Triton reports GPU memory on /metrics, else cpu.
"""

from __future__ import annotations

import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from triton_guard import defaults, promtext
from triton_guard.canary import memory
from triton_guard.canary.goldens import (
    GoldenCase,
    GoldenError,
    datatype_of,
    record_case_file,
)
from triton_guard.errors import RecordRefused, RecordUsage
from triton_guard.files import write_bytes
from triton_guard.inputs import InputsError, load_inputs
from triton_guard.model_source import served_tensors_source

_CASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Recorded:
    path: Path
    case: GoldenCase
    device_class: str
    source: str = ""  # where the tensors' names and types came from

    def describe(self) -> list[str]:
        expected = self.case.expected[self.device_class]
        outputs = ", ".join(
            f"{o.name} {o.datatype} {list(o.value.shape)}"
            + (f" (tolerance {o.tolerance:g})" if o.tolerance else " (exact)")
            for o in expected.outputs.values()
        )
        others = sorted(set(self.case.expected) - {self.device_class})
        return [
            *([f"model '{self.case.model}': {self.source}"] if self.source else []),
            f"recorded golden case '{self.case.name}' of model '{self.case.model}' for {self.device_class}: {outputs}",
            f"wrote {self.path} (sha256 {expected.sha256[:16]}...)"
            + (f", kept its {', '.join(others)} outputs" if others else "")
            + "; the canary checks it from its next run",
        ]


def server_device_class(url: str, metrics_url: str | None, timeout_s: float) -> str:
    if metrics_url is None:
        from triton_guard.canary.probe import ModelHealthValidator

        report = ModelHealthValidator(url, timeout_s).check().report
        if report is not None and report.device_class in ("cpu", "gpu"):
            return report.device_class
        metrics_url = promtext.metrics_url_for(url, report.metrics_url if report is not None else None)
    try:
        samples = promtext.fetch(metrics_url, timeout_s)
    except Exception as exc:
        raise RecordUsage(
            f"cannot tell a cpu from a gpu server: {metrics_url} unreachable ({exc}); "
            "pass --metrics-url or --device-class") from None
    return "gpu" if memory.read_gpu(promtext.sum_by_name(samples)) is not None else "cpu"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _as_declared(array: np.ndarray, declared: str) -> np.ndarray:
    """The input as the request carries it: numbers in native byte order (an .npz may hold big-endian ones,
    which tritonclient refuses), cast to the declared type within the same kind (an .npz of float64 for an
    FP32 input is a common slip); BYTES come from load_inputs as objects of bytes already."""
    from tritonclient.utils import triton_to_np_dtype

    if array.dtype.kind not in "biuf":
        return array
    target = None if declared == "BYTES" else triton_to_np_dtype(declared)
    if target is not None and np.can_cast(array.dtype, target, "same_kind"):
        return array.astype(target, copy=False)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _infer(client, model: str, inputs: Mapping[str, np.ndarray], outputs: list[str], timeout_s: float):
    import tritonclient.grpc as grpcclient

    tensors = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), datatype_of(array))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
    result = client.infer(model, tensors, outputs=requested, client_timeout=timeout_s)
    return {name: result.as_numpy(name) for name in outputs}


def default_repository(url: str) -> Path:
    """The repository a local `triton-guard serve` at `url` serves (server/local_record.py), else ./model_repository."""
    from triton_guard.server import local_record

    record = local_record.for_url(url)
    return Path(record.model_repository) if record is not None else Path("model_repository")


def _check_known(client, url: str, model: str, timeout_s: float) -> None:
    """Refuse a model the server does not have, or has not loaded, naming what it has."""
    from tritonclient.utils import InferenceServerException

    from triton_guard.server.auth import admin_headers_for, is_restricted_refusal

    try:
        # The repository index is a restricted API under `triton-guard serve`: the key of a local
        # serve is found by its port (auth.api_key_for); without one, the names are not listed.
        index = client.get_model_repository_index(headers=admin_headers_for(url, grpc=True), client_timeout=timeout_s)
        known = {m.name: m.state for m in index.models}
    except InferenceServerException as exc:
        if not is_restricted_refusal(exc.message()):
            raise
        known = None
    if known is not None and model not in known:
        raise RecordRefused(f"the server at {url} has no model '{model}' (it has: {', '.join(sorted(known))})")
    if not client.is_model_ready(model, client_timeout=timeout_s):
        state = (known or {}).get(model) or "not loaded"
        raise RecordRefused(f"model '{model}' is not ready on {url} (state {state})")


def record(
    url: str,
    model: str,
    inputs_file: Path,
    repository: Path | None = None,
    case_name: str | None = None,
    tolerances: Mapping[str, float] | None = None,
    default_tolerance: float = defaults.GOLDEN_TOLERANCE,
    device_class: str = "auto",
    metrics_url: str | None = None,
    timeout_s: float = 30.0,
) -> Recorded:
    """Record MODEL's answers to `inputs_file`; `repository` None: the one a local serve at `url` serves."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from triton_guard.server.auth import is_restricted_refusal, restricted_hint

    case_name = case_name or Path(inputs_file).name.split(".")[0]
    if not _CASE_NAME.match(case_name):
        raise RecordUsage(f"case name {case_name!r}: use letters, digits, '_', '-' and '.' (--name)")
    try:
        inputs = load_inputs(Path(inputs_file))
    except InputsError as exc:
        raise RecordUsage(str(exc)) from None
    repository = Path(repository) if repository is not None else default_repository(url)

    client = grpcclient.InferenceServerClient(url)
    try:
        try:
            client.is_server_live(client_timeout=timeout_s)
        except InferenceServerException as exc:
            raise RecordUsage(f"server at {url} unreachable: {exc.message()}") from None
        try:
            _check_known(client, url, model, timeout_s)
            metadata = client.get_model_metadata(model, client_timeout=timeout_s)
            declared = {i.name: i.datatype for i in metadata.inputs}
            outputs = [o.name for o in metadata.outputs]
            unknown = sorted(set(inputs) - set(declared))
            if unknown:
                raise RecordRefused(
                    f"{inputs_file}: model '{model}' has no input {', '.join(unknown)} (its inputs: {', '.join(declared)})")
            inputs = {n: _as_declared(a, declared[n]) for n, a in inputs.items()}
            try:
                first = _infer(client, model, inputs, outputs, timeout_s)
                second = _infer(client, model, inputs, outputs, timeout_s)
            except InferenceServerException as exc:
                raise RecordRefused(f"model '{model}' failed on {inputs_file}: {exc.message()}") from None
            server_version = client.get_server_metadata(client_timeout=timeout_s).version
        except InferenceServerException as exc:
            hint = f" ({restricted_hint(url)})" if is_restricted_refusal(exc.message()) else ""
            raise RecordUsage(f"server at {url}: {exc.message()}{hint}") from None
    finally:
        client.close()

    model_dir = Path(repository) / model
    if not model_dir.is_dir():
        raise RecordUsage(f"{model_dir} not found: pass the repository the server loads '{model}' from (--model-repository)")
    source = served_tensors_source(url, Path(repository), model)
    if device_class == "auto":
        device_class = server_device_class(url, metrics_url, timeout_s)
    environment = {
        "tritonserver": server_version,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
    }
    try:
        path, case = record_case_file(model_dir, case_name, inputs, first, second, device_class,
                                      tolerances or {}, default_tolerance, environment)
    except GoldenError as exc:
        raise RecordRefused(str(exc)) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, (case.to_json() + "\n").encode("utf-8"))  # the canary may read the folder at any moment
    return Recorded(path, case, device_class, source)
