"""A stand-in for the stub's `triton_python_backend_utils`: the backends outside Triton.

Enough of the Python backend's API for the guard's backends to run in a
plain process: unit tests (tests/unit/test_in_process.py,
tests/unit/test_bls_runtime.py) and the adapters' micro-benchmark
(scripts/bench_adapters.py). Everything through Triton itself is tested
against a real server.

    with stand_in.installed() as pb_utils:
        from triton_guard.backends import bls     # bound to the stand-in
        pb_utils.bls_handler = lambda request: pb_utils.InferenceResponse([...])

`installed()` puts the stand-in where `import triton_python_backend_utils`
finds it and imports the backends afresh; on exit both are as they were.
BLS calls (`InferenceRequest.exec`) go to `bls_handler(request)`; metrics
land in `MetricFamily.created` (every family, its series and their values).
"""

from __future__ import annotations

import contextlib
import json
import sys
import types
from typing import Callable, Iterator

import numpy as np

try:
    from triton_guard.errors import StandInModelException
except ImportError:  # an older revision's package beside it (scripts/bench_adapters.py --against)
    StandInModelException = Exception

MODULE = "triton_python_backend_utils"


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS = 0, 1, 2, 3, 4, 5, 6

    def __init__(self, message: str, code: int = 1) -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


TritonModelException = StandInModelException  # pb_utils' name for a model's failed load


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)


class InferenceResponse:
    def __init__(self, output_tensors=(), error: TritonError | None = None) -> None:
        self._outputs, self._error = list(output_tensors), error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def output_tensors(self) -> list[Tensor]:
        return list(self._outputs)  # a new list per call, as the stub's binding makes


def _no_bls(request: InferenceRequest) -> InferenceResponse:
    return InferenceResponse(error=TritonError(f"no BLS handler for model '{request.model_name}'"))


class InferenceRequest:
    def __init__(self, model_name: str = "", inputs=(), requested_output_names=(), timeout: int = 0,
                 parameters: dict | None = None, **_: object) -> None:  # fmt: skip
        self.model_name, self._inputs, self._outputs = model_name, list(inputs), list(requested_output_names)
        self.timeout_us = timeout
        self._parameters = json.dumps(parameters or {})

    def inputs(self) -> list[Tensor]:
        return list(self._inputs)

    def requested_output_names(self) -> list[str]:
        return list(self._outputs)

    def parameters(self) -> str:
        return self._parameters

    def exec(self) -> InferenceResponse:
        return sys.modules[MODULE].bls_handler(self)


class _Metric:
    def __init__(self, family: MetricFamily, labels: dict) -> None:
        self.family, self.labels, self.value = family, dict(labels), 0.0

    def set(self, value: float) -> None:
        self.value = value

    def increment(self, value: float) -> None:
        self.value += value


class MetricFamily:
    COUNTER, GAUGE, HISTOGRAM = "COUNTER", "GAUGE", "HISTOGRAM"
    created: list[MetricFamily] = []

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.description, self.kind = name, description, kind
        self.metrics: list[_Metric] = []
        MetricFamily.created.append(self)

    def Metric(self, labels: dict) -> _Metric:  # noqa: N802 (pb_utils' name)
        metric = _Metric(self, labels)
        self.metrics.append(metric)
        return metric

    @classmethod
    def values(cls, name: str) -> dict[tuple, float]:
        """Every series of family `name`: sorted label items -> value."""
        return {tuple(sorted(m.labels.items())): m.value for f in cls.created if f.name == name for m in f.metrics}


def get_input_tensor_by_name(request, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def _module() -> types.ModuleType:
    module = types.ModuleType(MODULE)
    for name in ("TritonError", "TritonModelException", "Tensor", "InferenceResponse", "InferenceRequest",
                 "MetricFamily", "get_input_tensor_by_name", "get_output_tensor_by_name"):  # fmt: skip
        setattr(module, name, globals()[name])
    module.logged = []
    module.Logger = types.SimpleNamespace(
        log_warn=lambda m: module.logged.append(("warn", m)),
        log_info=lambda m: module.logged.append(("info", m)),
        log_error=lambda m: module.logged.append(("error", m)),
    )
    module.bls_handler: Callable[[InferenceRequest], InferenceResponse] = _no_bls
    module.is_model_ready = lambda *args, **kwargs: True
    return module


@contextlib.contextmanager
def installed() -> Iterator[types.ModuleType]:
    """The stand-in as triton_python_backend_utils, with the backends imported afresh against it."""
    package = sys.modules["triton_guard.backends"]

    def bound(name: str) -> bool:  # a module that may hold the stub's pb_utils
        return name == MODULE or (name.startswith("triton_guard.backends.") and name != __name__)

    saved = {name: module for name, module in sys.modules.items() if bound(name)}
    attributes = dict(vars(package))
    for name in saved:
        del sys.modules[name]
    MetricFamily.created = []
    sys.modules[MODULE] = module = _module()
    try:
        yield module
    finally:
        for name in [n for n in sys.modules if bound(n)]:
            del sys.modules[name]
        sys.modules.update(saved)
        for key in set(vars(package)) - set(attributes):
            delattr(package, key)
        for key, value in attributes.items():
            setattr(package, key, value)
