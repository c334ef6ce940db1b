"""The in-process adapter's pure parts, with a stand-in for the stub's pb_utils module.

Everything that needs a real stub (timeouts, abandoned calls, loads) is in
tests/integration/test_in_process.py.
"""

from __future__ import annotations

import importlib
import json
import sys
import types

import pytest


class _TritonError:
    INTERNAL, INVALID_ARG, UNAVAILABLE = 13, 3, 14

    def __init__(self, message, code=13):
        self._message, self._code = message, code

    def message(self):
        return self._message

    def code(self):
        return self._code


class _Response:
    def __init__(self, outputs=(), error=None):
        self.outputs, self._error = outputs, error

    def has_error(self):
        return self._error is not None

    def error(self):
        return self._error

    def output_tensors(self):
        return list(self.outputs)


_IMPORTED = ("metric_families", "drift_tap", "bls", "guard.in_process")  # what importing in_process binds to the fake


@pytest.fixture
def in_process(monkeypatch):
    import triton_guard.backends.guard

    fake = types.ModuleType("triton_python_backend_utils")
    fake.TritonError, fake.InferenceResponse = _TritonError, _Response
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    # Fresh imports bound to the fake; afterwards modules and package attributes are as they were.
    names = [f"triton_guard.backends.{name}" for name in _IMPORTED]
    saved = {name: sys.modules.pop(name, None) for name in names}
    yield importlib.import_module("triton_guard.backends.guard.in_process")
    for name in names:
        package, _, attribute = name.rpartition(".")
        if saved[name] is None:
            sys.modules.pop(name, None)
            if hasattr(sys.modules[package], attribute):
                delattr(sys.modules[package], attribute)
        else:
            sys.modules[name] = saved[name]
            setattr(sys.modules[package], attribute, saved[name])


def _args(tmp_path, parameters, with_model_py=True):
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    if with_model_py:
        (version / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    config = {"name": "m", "parameters": {k: {"string_value": v} for k, v in parameters.items()}}
    return {"model_config": json.dumps(config), "model_repository": str(tmp_path / "m"), "model_version": "1"}


def test_in_process_only_without_upstream_model_and_with_a_model_py(in_process, tmp_path):
    assert in_process.own_model_file(_args(tmp_path / "a", {"timeout_ms": "5"})) == str(tmp_path / "a/m/1/model.py")
    assert in_process.own_model_file(_args(tmp_path / "b", {"upstream_model": "x"})) is None
    assert in_process.own_model_file(_args(tmp_path / "c", {}, with_model_py=False)) is None


def test_the_models_module_gets_a_name_of_its_own(in_process, tmp_path):
    args = _args(tmp_path, {})
    module = in_process._import_model(in_process.own_model_file(args), "my-model", "1")
    assert module.__name__ != "model" and "my_model_1" in module.__name__
    assert sys.modules[module.__name__] is module
    sys.modules.pop(module.__name__)


def test_a_model_py_without_the_class_is_refused_naming_the_file(in_process, tmp_path):
    args = _args(tmp_path, {})
    (tmp_path / "m" / "1" / "model.py").write_text("x = 1\n")
    with pytest.raises(RuntimeError, match="model.py defines no TritonPythonModel"):
        in_process._import_model(in_process.own_model_file(args), "m", "1")


def test_invalid_arg_answers_are_not_the_models_failure(in_process):
    bad_input = _Response(error=_TritonError("X must be non-negative", _TritonError.INVALID_ARG))
    assert in_process._error_of([_Response(), bad_input]) is None
    broken = _Response(error=_TritonError("CUDA error", _TritonError.INTERNAL))
    assert in_process._error_of([bad_input, broken, _Response()]) == "CUDA error"


@pytest.mark.parametrize(
    "message, expected",
    [
        ("in ensemble 'pipeline', Failed to process the request(s) for model instance 'classifier_0_0', "
         "message: Stub process 'classifier_0_0' is not healthy.", "classifier"),
        ("Stub process 'classifier_guard_0_1' is not healthy.", "classifier_guard"),
        ("Stub process 'net2_1_0' is not healthy.", "net2"),
        ("in ensemble 'pipeline', model 'classifier' did not answer within timeout_ms=10000", None),
    ],
)  # fmt: skip
def test_the_model_of_a_dead_stub_is_reloaded(in_process, monkeypatch, message, expected):
    requested = []
    monkeypatch.setattr(in_process.SideHealer, "request", lambda self: requested.append(self.upstream))
    monkeypatch.setattr(in_process, "_HEALERS", {})
    assert in_process.heal_dead_stub(message, 10.0) == expected
    assert requested == ([expected] if expected else [])


class _Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, array

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class _Request:
    def __init__(self, model_name="", inputs=(), requested_output_names=()):
        self._inputs, self._outputs = list(inputs), list(requested_output_names)

    def inputs(self):
        return self._inputs

    def requested_output_names(self):
        return self._outputs


class _Recovery:
    enabled = True


def _probing_guard(in_process, model):
    """An InProcessGuard's probe side only: the real methods, a stand-in model."""
    guard = object.__new__(in_process.InProcessGuard)
    guard.name, guard.model = "my_model", model
    guard.guarded = types.SimpleNamespace(recovery=_Recovery())
    guard._probe_request, guard._probe_request_at = None, -float("inf")
    return guard


def test_the_recovery_probe_replays_a_kept_request_through_the_model_itself(in_process, monkeypatch):
    import numpy as np

    fake = sys.modules["triton_python_backend_utils"]
    monkeypatch.setattr(fake, "Tensor", _Tensor, raising=False)
    monkeypatch.setattr(fake, "InferenceRequest", _Request, raising=False)
    seen = []

    class Model:
        answer = "ok"

        def execute(self, requests):
            seen.append({t.name(): t.as_numpy().tolist() for t in requests[0].inputs()})
            if self.answer == "error":
                return [_Response(error=_TritonError("CUDA error"))]
            return [_Response(outputs=())]

    model = Model()
    guard = _probing_guard(in_process, model)
    assert guard._make_probe() is None  # nothing served yet: no input to probe with
    x = np.array([[1.0, 2.0]], np.float32)
    guard._keep_probe_request(_Request(inputs=[_Tensor("X", x)], requested_output_names=["Y"]), _Response())
    x[0, 0] = 99.0  # the request's memory is gone after the execute: the probe kept a copy
    answer = guard._make_probe()(1.0)
    assert not isinstance(answer, str) and seen == [{"X": [[1.0, 2.0]]}]
    model.answer = "error"
    assert guard._make_probe()(1.0) == "CUDA error"  # a failed probe: the breaker stays OPEN


def test_an_error_answer_is_never_kept_as_the_probe_input(in_process):
    import numpy as np

    guard = _probing_guard(in_process, model=None)
    bad = _Response(error=_TritonError("bad input", _TritonError.INVALID_ARG))
    guard._keep_probe_request(_Request(inputs=[_Tensor("X", np.zeros(2))]), bad)
    assert guard._probe_request is None
