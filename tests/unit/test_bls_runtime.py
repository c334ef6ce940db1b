"""The BLS placements' runtime outside Triton (backends/bls.py, backends/runtime.py) on the stand-in pb_utils.

Batch splitting, the split retry after a client's mistake, probe sampling
and what a probe publishes, the metrics, healing and the settings checks.
Through a real server: tests/integration/test_guard.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from triton_guard import defaults
from triton_guard import metrics as catalogue
from triton_guard.backends import stand_in
from triton_guard.guard.config import ConfigError
from triton_guard.guard.record import State
from triton_guard.guard.holders import is_held
from triton_guard.guard.shared_state import read_claim
from triton_guard.guard.state_dir import default_state_dir
from triton_guard.guard.store import SettingsConflict

CLIENT_ERROR = "inference input 'X' data-type is 'INT32', but model 'up' expects 'FP32'"


@pytest.fixture
def pb(monkeypatch, tmp_path):
    monkeypatch.setenv(defaults.STATE_DIR_ENV, str(tmp_path / "state"))
    with stand_in.installed() as pb_utils:
        from triton_guard.backends import bls

        pb_utils.bls = bls
        pb_utils.calls = []
        pb_utils.bls_handler = lambda request: _doubled(pb_utils, request)
        yield pb_utils


def _doubled(pb, request):
    """The upstream: Y = 2 X, or the error the test scripted for inputs holding a negative value."""
    x = pb.get_input_tensor_by_name(request, "X").as_numpy()
    pb.calls.append(x.copy())
    if (x < 0).any():
        return pb.InferenceResponse(error=pb.TritonError(CLIENT_ERROR))
    return pb.InferenceResponse([pb.Tensor("Y", x * 2)])


@pytest.fixture
def upstream(pb):
    made = []

    def make(**parameters):
        guarded = pb.bls.GuardedUpstream(
            "up", instance_name="up_guard_0_1", upstream_batches=True, **{"probe_interval_ms": "0", **parameters}
        )
        made.append(guarded)
        return guarded

    yield make
    for guarded in made:
        guarded.close()


def rows(*values):
    return {"X": np.array([[v] for v in values], dtype=np.float32)}


# --- batches ------------------------------------------------------------------------------


def test_one_execute_is_one_bls_call_split_back_per_request(pb, upstream):
    guarded = upstream()
    results = guarded.infer_requests([rows(1, 2), rows(3), rows(4, 5, 6)], ["Y"], [None, None, None])
    assert [c.ravel().tolist() for c in pb.calls] == [[1, 2, 3, 4, 5, 6]]  # concatenated, in order
    assert [r.value["Y"].ravel().tolist() for r in results] == [[2, 4], [6], [8, 10, 12]]


def test_a_batch_failing_with_a_clients_mistake_is_retried_request_by_request(pb, upstream):
    guarded = upstream(failure_threshold="1")
    results = guarded.infer_requests([rows(1), rows(-1), rows(3)], ["Y"], [None, None, None])
    assert [c.ravel().tolist() for c in pb.calls] == [[1, -1, 3], [1], [-1], [3]]
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].message == CLIENT_ERROR and results[1].code.name == "INVALID_ARG"
    assert guarded.breaker.snapshot().state is State.CLOSED  # a client's mistake never counts


def test_an_upstream_error_fails_every_request_and_counts_each(pb, upstream):
    guarded = upstream(failure_threshold="3")
    pb.bls_handler = lambda request: pb.InferenceResponse(error=pb.TritonError("CUDA error: out of memory"))
    results = guarded.infer_requests([rows(1), rows(2), rows(3)], ["Y"], [None, None, None])
    assert {r.message for r in results} == {"upstream model 'up' failed: CUDA error: out of memory"}
    assert guarded.breaker.snapshot().state is State.OPEN  # three requests, three failures
    guarded.publish_metrics()
    assert pb.MetricFamily.values(catalogue.UPSTREAM_FAILURES.name) == {
        (("model", "up"), ("reason", "upstream_error")): 3
    }
    assert pb.MetricFamily.values(catalogue.BREAKER_TRANSITIONS.name) == {(("model", "up"), ("to", "OPEN")): 1}
    assert pb.MetricFamily.values(catalogue.BREAKER_STATE.name) == {(("model", "up"),): 1}


def test_non_finite_answers_are_failures_naming_the_output(pb, upstream):
    guarded = upstream()
    pb.bls_handler = lambda request: pb.InferenceResponse([pb.Tensor("Y", np.full((2, 1), np.inf, np.float32))])
    result = guarded.infer(rows(1, 2), ["Y"], requests=2)
    assert result.failure.value == "non_finite"
    assert "output 'Y' holds 2 non-finite value(s)" in result.message


def test_the_bls_call_carries_the_time_left_in_microseconds(pb, upstream):
    guarded = upstream(timeout_ms="1500")
    seen = []
    pb.bls_handler = lambda request: seen.append(request.timeout_us) or pb.InferenceResponse([pb.Tensor("Y", np.ones((1, 1)))])
    guarded.infer(rows(1), ["Y"])
    assert 1_400_000 < seen[0] <= 1_500_000


# --- probes ----------------------------------------------------------------------------------


def test_probe_sampling_keeps_one_row_copied_and_refreshes_it_only_when_due(pb, upstream):
    guarded = upstream(probe_interval_ms="1000")
    assert guarded.make_probe() is None  # nothing answered yet: nothing to probe with
    first = rows(1, 2)
    guarded.infer(first, ["Y"], requests=2)
    first["X"][0, 0] = 99.0  # the request's memory is reused after the execute
    inputs, outputs = guarded.probe_sample.value
    assert inputs["X"].tolist() == [[1.0]] and outputs == ["Y"]  # one row, a copy
    guarded.infer(rows(7), ["Y"])
    assert guarded.probe_sample.value[0]["X"].tolist() == [[1.0]]  # refreshed at most every PROBE_SAMPLE_REFRESH_S
    pb.calls.clear()
    answer = guarded.make_probe()(1.0)
    assert answer["Y"].tolist() == [[2.0]] and [c.tolist() for c in pb.calls] == [[[1.0]]]


def test_a_good_probe_ends_open_and_its_transition_is_published(pb, upstream):
    guarded = upstream(probe_interval_ms="1000", failure_threshold="1")
    guarded.infer(rows(1), ["Y"])  # a good call: the probe's input
    pb.bls_handler = lambda request: pb.InferenceResponse(error=pb.TritonError("CUDA error"))
    guarded.infer(rows(1), ["Y"])
    assert guarded.breaker.snapshot().state is State.OPEN
    assert guarded.recovery.probe_once() == "failed"  # still broken: OPEN stays
    pb.bls_handler = lambda request: _doubled(pb, request)
    assert guarded.recovery.probe_once() == "succeeded"
    assert guarded.breaker.snapshot().state is State.HALF_OPEN
    guarded.publish_metrics()
    transitions = pb.MetricFamily.values(catalogue.BREAKER_TRANSITIONS.name)
    assert transitions == {(("model", "up"), ("to", "OPEN")): 1, (("model", "up"), ("to", "HALF_OPEN")): 1}
    assert ("info", "guard: a recovery probe of 'up' was answered; breaker HALF_OPEN") in pb.logged


# --- the rest of the runtime ------------------------------------------------------------------------


def test_a_dead_upstream_stub_is_healed_from_the_side(pb, upstream, monkeypatch):
    guarded = upstream()
    healed = []
    monkeypatch.setattr(guarded.healer, "request", lambda: healed.append(True))
    pb.bls_handler = lambda request: pb.InferenceResponse(error=pb.TritonError("Stub process 'up_0_0' is not healthy."))
    assert guarded.infer(rows(1), ["Y"]).failure.value == "stub_dead"
    assert healed == [True]


def test_every_call_publishes_its_duration_and_the_instance_its_calls_in_flight(pb, upstream):
    guarded = upstream()
    for _ in range(3):
        guarded.infer(rows(1), ["Y"])
    guarded.publish_metrics()
    assert pb.MetricFamily.values(catalogue.UPSTREAM_CALL_SECONDS.name + "_count") == {(("model", "up"),): 3}
    assert pb.MetricFamily.values(catalogue.INFLIGHT_CALLS.name) == {(("instance", "up_guard_0_1"), ("model", "up")): 0}
    guarded.publish_metrics()  # nothing new: the counters stay
    assert pb.MetricFamily.values(catalogue.UPSTREAM_CALL_SECONDS.name + "_count") == {(("model", "up"),): 3}


def test_settings_are_checked_once_at_load_naming_the_parameter(pb, upstream):
    with pytest.raises(ConfigError, match="timeout_ms='soon' is invalid"):
        upstream(timeout_ms="soon")
    with pytest.raises(ConfigError, match="unknown guard parameter"):
        upstream(timeout_msec="5")
    guarded = upstream(client_error_pattern="^my model says no", check_finite="false")
    assert guarded.settings.classifier.classify("my model says no: X < 0").value == "client_error"
    assert guarded.settings.check_finite is False


def test_two_guards_of_one_upstream_with_other_settings_conflict(pb, upstream):
    upstream(failure_threshold="3")  # still runs: it holds the breaker
    with pytest.raises(SettingsConflict, match="failure_threshold=4 here, 3 there"):
        pb.bls.GuardedUpstream("up", instance_name="other_guard_0_0", failure_threshold="4")
    assert is_held(default_state_dir(), "up", "up_guard")
    assert not is_held(default_state_dir(), "up", "other_guard")  # the refused guard let go at once



def test_a_claimant_whose_holder_file_is_gone_still_counts(pb, upstream):
    """The state directory removed under live guards takes their lock files with it: nothing says they left."""
    upstream(failure_threshold="3")
    for holder in Path(default_state_dir()).glob("holder-*.lock"):
        holder.unlink()
    with pytest.raises(SettingsConflict, match="failure_threshold=4 here, 3 there"):
        pb.bls.GuardedUpstream("up", instance_name="other_guard_0_0", failure_threshold="4")

def test_a_claim_left_by_a_guard_no_process_runs_any_more_does_not_block(pb, upstream):
    """Unguarded, or replaced by another placement, on a running server: its claim outlives it."""
    upstream(failure_threshold="3").close()  # as at unload: its hold on the breaker ends
    replacement = pb.bls.GuardedUpstream("up", instance_name="other_guard_0_0", failure_threshold="4")
    try:
        claim = read_claim(default_state_dir(), "up")
        assert claim["models"] == ["other_guard"] and claim["settings"]["failure_threshold"] == 4
        assert any("'up_guard', which no process runs as a guard any more: claim dropped" in m for _, m in pb.logged)
    finally:
        replacement.close()
