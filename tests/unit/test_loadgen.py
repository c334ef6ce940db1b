"""triton_guard_demo.loadgen's bookkeeping: reasons from messages, per-second rows, request bytes (no server)."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from triton_guard_demo.loadgen import LoadResult, LoadSpec, Second, _split, classify, request_bytes


@pytest.mark.parametrize("code, message, reason", [
    ("UNAVAILABLE", "in ensemble 'pipeline', Exceeds maximum queue size", "queue_full"),
    ("UNAVAILABLE", "in ensemble 'pipeline', Request timeout expired", "queue_timeout"),
    ("UNAVAILABLE", "model 'classifier' overloaded: 8 calls in flight (max_inflight=8)", "bulkhead"),
    ("UNAVAILABLE", "Service temporarily unavailable: circuit breaker for model 'classifier' is OPEN", "breaker"),
    ("UNAVAILABLE", "model 'classifier' did not answer within timeout_ms=10000", "deadline"),
    ("UNAVAILABLE", "model 'classifier': deadline timeout_ms=10000 passed after 10012 ms of waiting", "deadline"),
    ("INTERNAL", "Stub process 'classifier_0_0' is not healthy.", "stub_dead"),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", "client_timeout"),
    ("UNAVAILABLE", "failed to connect to all addresses", "unreachable"),
    ("INTERNAL", "something else", "other"),
])
def test_every_refusal_is_classified_by_its_message(code, message, reason):
    assert classify(code, message) == reason


def test_seconds_merge_across_workers_and_missing_seconds_are_empty_rows():
    a, b = Second(0, answers=2, latencies_ms=[1.0, 3.0]), Second(0, answers=1, wrong=1, latencies_ms=[2.0])
    a.errors["queue_full"], b.errors["queue_full"] = 3, 4
    a.examples["queue_full"], b.examples["queue_full"] = "first", "second"
    a.merge(b)
    assert (a.answers, a.wrong, a.errors["queue_full"], a.examples["queue_full"]) == (3, 1, 7, "first")
    result = LoadResult({0: a, 2: Second(2, answers=5, latencies_ms=[9.0] * 5)}, client_cpu_s=1.0, wall_s=2.0)
    assert [r.second for r in result.rows()] == [0, 1, 2] and result.rows()[1].answers == 0
    assert result.totals(first=1).answers == 5 and result.totals().answers == 8
    assert result.rows()[1].p99_ms() is None and result.rows()[2].p99_ms() == 9.0


def test_requests_are_serialised_once_per_digit_with_every_output_left_to_the_server():
    images = np.arange(2 * 64, dtype=np.uint8).reshape(2, 8, 8)
    first, second = (service_pb2.ModelInferRequest.FromString(b) for b in request_bytes("pipeline", images))
    assert first.model_name == "pipeline" and list(first.inputs[0].shape) == [1, 8, 8]
    assert first.inputs[0].datatype == "UINT8" and not first.outputs
    assert second.raw_input_contents[0] == images[1].tobytes()


def test_clients_are_spread_over_the_processes_and_a_bad_spec_is_refused():
    assert _split(256, 3) == [86, 85, 85] and sum(_split(7, 2)) == 7
    with pytest.raises(ValueError):
        LoadSpec("localhost:8001", clients=0)
