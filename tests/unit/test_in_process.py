"""The in-process adapter, outside Triton: its pure parts and whole executes, on the stand-in pb_utils.

Everything that needs a real stub (timeouts of a real model, abandoned calls,
loads) is in tests/integration/test_in_process.py.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from triton_guard import defaults
from triton_guard import metrics as catalogue
from triton_guard.backends import stand_in


@pytest.fixture
def pb(monkeypatch, tmp_path):
    monkeypatch.setenv(defaults.STATE_DIR_ENV, str(tmp_path / "state"))
    with stand_in.installed() as pb_utils:
        from triton_guard.backends.guard import in_process

        pb_utils.in_process = in_process
        yield pb_utils


MODEL_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.calls = []
        self.answer = "ok"

    def execute(self, requests):
        self.calls.append(len(requests))
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if self.answer == "error":
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("CUDA error")))
            elif self.answer == "nan":
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * np.nan)]))
            elif self.answer == "bad input" and x.min() < 0:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("X must be non-negative", pb_utils.TritonError.INVALID_ARG)))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
        return responses
'''


def _args(tmp_path, parameters, with_model_py=True, stamped=True):
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    if with_model_py:
        (version / "model.py").write_text(MODEL_PY)
    inputs = [{"name": "X"}] + ([{"name": defaults.ARRIVAL_INPUT}] if stamped else [])
    config = {
        "name": "m",
        "parameters": {k: {"string_value": v} for k, v in parameters.items()},
        "input": inputs,
        "output": [{"name": "Y"}],
    }
    return {"model_config": json.dumps(config), "model_repository": str(tmp_path / "m"), "model_version": "1",
            "model_instance_name": "m_0_0"}  # fmt: skip


def _request(pb, x, arrived_ns=None):
    tensors = [pb.Tensor("X", np.array(x, dtype=np.float32))]
    if arrived_ns is not None:
        tensors.append(pb.Tensor(defaults.ARRIVAL_INPUT, np.array([[arrived_ns]], dtype=np.int64)))
    return pb.InferenceRequest("m", tensors, ["Y"])


@pytest.fixture
def guarded(pb, tmp_path):
    guards = []

    def make(**parameters):
        args = _args(tmp_path / str(len(guards)), {"probe_interval_ms": "0", **parameters})
        guard = pb.in_process.InProcessGuard(args, pb.in_process.own_model_file(args))
        guards.append(guard)
        return guard

    yield make
    for guard in guards:
        guard.finalize()


# --- whole executes ---------------------------------------------------------------------------


def test_one_execute_runs_the_models_own_execute_once_for_the_batch(pb, guarded):
    guard = guarded()
    now_ns = int(pb.in_process.time.monotonic() * 1e9)
    responses = guard.execute([_request(pb, [[1.0]], now_ns), _request(pb, [[2.0], [3.0]], now_ns)])
    assert guard.model.calls == [2]
    assert [r.output_tensors()[0].as_numpy().tolist() for r in responses] == [[[2.0]], [[4.0], [6.0]]]


def test_a_request_whose_deadline_passed_before_the_guard_is_answered_without_the_model(pb, guarded):
    guard = guarded(timeout_ms="1000")
    now_ns = int(pb.in_process.time.monotonic() * 1e9)
    late = now_ns - 5 * 10**9  # stamped 5 s ago: 4 s past its deadline
    responses = guard.execute([_request(pb, [[1.0]], late), _request(pb, [[2.0]], now_ns)])
    assert guard.model.calls == [1]  # only the live request reached the model
    assert responses[0].has_error() and "deadline timeout_ms=1000 passed after" in responses[0].error().message()
    assert responses[0].error().code() == pb.TritonError.UNAVAILABLE
    assert not responses[1].has_error()


def test_the_models_own_errors_go_out_and_count(pb, guarded):
    guard = guarded(failure_threshold="2")
    guard.model.answer = "error"
    for _ in range(2):
        responses = guard.execute([_request(pb, [[1.0]])])
        assert responses[0].error().message() == "CUDA error"  # its own answer, not a rewording
    responses = guard.execute([_request(pb, [[1.0]])])
    assert responses[0].error().message().startswith("Service temporarily unavailable: circuit breaker for model 'm'")
    assert guard.model.calls == [1, 1]  # OPEN: the model's code is not entered


def test_non_finite_outputs_fail_the_batch_naming_the_output(pb, guarded):
    guard = guarded()
    guard.model.answer = "nan"
    responses = guard.execute([_request(pb, [[1.0, 2.0]]), _request(pb, [[3.0, 4.0]])])
    messages = {r.error().message() for r in responses}
    assert messages == {"upstream model 'm' failed: output 'Y' holds 4 non-finite value(s) (NaN or inf) of 4"}
    assert all(r.error().code() == pb.TritonError.INTERNAL for r in responses)
    assert len({id(r.error()) for r in responses}) == 2  # one error object per response (a shared one crashed Triton)


def test_invalid_arg_answers_are_the_clients_and_never_count(pb, guarded):
    guard = guarded(failure_threshold="1")
    guard.model.answer = "bad input"
    responses = guard.execute([_request(pb, [[1.0]]), _request(pb, [[-1.0]])])
    assert not responses[0].has_error()
    assert responses[1].error().code() == pb.TritonError.INVALID_ARG
    assert guard.runtime.breaker.snapshot().consecutive_failures == 0


def test_the_drift_tap_sees_the_answers_of_good_requests_only(pb, guarded, monkeypatch):
    guard = guarded()
    seen = []
    monkeypatch.setattr(guard, "drift", type("Tap", (), {"observe_per_request": lambda self, v, r: seen.append(v)})())
    guard.model.answer = "bad input"
    guard.execute([_request(pb, [[1.0]]), _request(pb, [[-1.0]])])
    (values,) = seen
    assert values[0]["Y"].tolist() == [[2.0]] and values[1] is None


def test_the_guard_parameters_are_the_guards_and_the_rest_the_models(pb, tmp_path):
    args = _args(tmp_path, {"timeout_ms": "nope"})
    with pytest.raises(pb.TritonModelException, match="guard model 'm': timeout_ms='nope' is invalid"):
        pb.in_process.InProcessGuard(args, pb.in_process.own_model_file(args))


def test_its_metrics_are_published_with_its_instance(pb, guarded):
    guard = guarded()
    guard.execute([_request(pb, [[1.0]])])
    guard.runtime.publish_metrics()
    assert pb.MetricFamily.values(catalogue.INFLIGHT_CALLS.name) == {(("instance", "m_0_0"), ("model", "m")): 0}
    assert pb.MetricFamily.values(catalogue.UPSTREAM_CALL_SECONDS.name + "_count") == {(("model", "m"),): 1}


# --- the pure parts ---------------------------------------------------------------------------------


def test_in_process_only_without_upstream_model_and_with_a_model_py(pb, tmp_path):
    in_process = pb.in_process
    assert in_process.own_model_file(_args(tmp_path / "a", {"timeout_ms": "5"})) == str(tmp_path / "a/m/1/model.py")
    assert in_process.own_model_file(_args(tmp_path / "b", {"upstream_model": "x"})) is None
    assert in_process.own_model_file(_args(tmp_path / "c", {}, with_model_py=False)) is None


def test_the_models_module_gets_a_name_of_its_own(pb, tmp_path):
    args = _args(tmp_path, {})
    module = pb.in_process._import_model(pb.in_process.own_model_file(args), "my-model", "1")
    assert module.__name__ != "model" and "my_model_1" in module.__name__
    assert sys.modules[module.__name__] is module
    sys.modules.pop(module.__name__)


def test_a_model_py_without_the_class_is_refused_naming_the_file(pb, tmp_path):
    args = _args(tmp_path, {})
    (tmp_path / "m" / "1" / "model.py").write_text("x = 1\n")
    with pytest.raises(RuntimeError, match="model.py defines no TritonPythonModel"):
        pb.in_process._import_model(pb.in_process.own_model_file(args), "m", "1")


def test_invalid_arg_answers_are_not_the_models_failure(pb):
    bad_input = pb.InferenceResponse(error=pb.TritonError("X must be non-negative", pb.TritonError.INVALID_ARG))
    assert pb.in_process.first_model_error([pb.InferenceResponse(), bad_input]) is None
    broken = pb.InferenceResponse(error=pb.TritonError("CUDA error", pb.TritonError.INTERNAL))
    assert pb.in_process.first_model_error([bad_input, broken, pb.InferenceResponse()]) == "CUDA error"


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
def test_the_model_of_a_dead_stub_is_reloaded(pb, monkeypatch, message, expected):
    from triton_guard.guard.healer import SideHealer

    in_process = pb.in_process
    requested = []
    monkeypatch.setattr(SideHealer, "request", lambda self: requested.append(self.upstream))
    monkeypatch.setattr(in_process, "_HEALERS", {})
    assert in_process.heal_dead_stub(message, 10.0) == expected
    assert requested == ([expected] if expected else [])


def test_the_recovery_probe_replays_a_kept_request_through_the_model_itself(pb, guarded):
    guard = guarded(probe_interval_ms="1000")
    assert guard.make_probe() is None  # nothing served yet: no input to probe with
    x = np.array([[1.0, 2.0]], np.float32)
    guard.execute([_request(pb, x)])
    x[0, 0] = 99.0  # the request's memory is gone after the execute: the probe kept a copy
    answer = guard.make_probe()(1.0)
    assert not isinstance(answer, str) and answer[0].output_tensors()[0].as_numpy().tolist() == [[2.0, 4.0]]
    guard.model.answer = "error"
    assert guard.make_probe()(1.0) == "CUDA error"  # a failed probe: the breaker stays OPEN
    guard.model.answer = "nan"
    assert "non-finite" in guard.make_probe()(1.0)


def test_an_error_answer_is_never_kept_as_the_probe_input(pb, guarded):
    guard = guarded(probe_interval_ms="1000")
    guard.model.answer = "bad input"
    guard.execute([_request(pb, [[-1.0]])])
    assert guard.make_probe() is None
