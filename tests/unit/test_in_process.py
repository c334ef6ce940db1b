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
