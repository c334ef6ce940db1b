"""The in-process placement against a real tritonserver: a Python model guarded in its own stub.

repos/in_process/faulty is `backend: "guard"` with no upstream_model and its
own model.py; a test sets its behaviour through a file. Limits: timeout
300 ms, 5 failures in a row open, recovery 1 s, 2 calls in flight at most.
(Who heals a dead stub of an in-process model, the canary, is tested on the
demo pipeline in test_defences.py.)
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import wait_until
from tests.integration.conftest import CLI, FAULTS_ENV, REPOS, breaker_snapshot, breaker_state, metric, run_cli, running_server
from tests.integration.conftest import set_fault as set_model_fault
from triton_guard.defaults import QUEUE_IDLE_GAP_S
from triton_guard.guard.breaker import State
from triton_guard.metrics import BREAKER_OVERRIDE

pytestmark = pytest.mark.integration

MODEL = "faulty"
TIMEOUT_S = 0.300
RECOVERY_S = 1.0
FAILURE_THRESHOLD = 5
MAX_INFLIGHT = 2
SCALE = 2.0  # the model's own `scale` parameter
# A caller may also wait in Triton's queue behind an execute the guard is abandoning.
DEADLINE_S = TIMEOUT_S + 1.0


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    copy = tmp_path_factory.mktemp("in-process") / "repository"
    shutil.copytree(REPOS / "in_process", copy)
    return copy


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory, faults):
    log = tmp_path_factory.mktemp("in-process-server") / "tritonserver.log"
    with running_server(repository, log, env={FAULTS_ENV: str(faults)}) as srv:
        yield srv


def set_fault(faults: Path, mode: str) -> None:
    set_model_fault(faults, MODEL, mode)


def executes(faults: Path, log: str = "calls") -> int:
    """How many times the model's own execute has started (log="calls") or returned (log="returned")."""
    path = faults / f"{MODEL}.{log}"
    return len(path.read_text().splitlines()) if path.exists() else 0


def state(server) -> State:
    return breaker_state(server, MODEL)


def inputs(x):
    tensor = grpcclient.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return [tensor]


def call(server, x=None, client_timeout_s: float = 30.0):
    """(ok, Y or the error, seconds) for one request."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = np.ones((1, 4), np.float32) if x is None else x
    started = time.monotonic()
    try:
        result = client.infer(MODEL, inputs(x), client_timeout=client_timeout_s)
        return True, result.as_numpy("Y"), time.monotonic() - started
    except InferenceServerException as exc:
        return False, exc, time.monotonic() - started


@pytest.fixture(autouse=True)
def healthy_model(server, faults):
    """Every test starts with the fault cleared, nothing in flight and the breaker CLOSED."""
    set_fault(faults, "ok")

    def closed():
        return call(server)[0] and state(server) is State.CLOSED  # a trial call once recovery has passed

    wait_until(closed, RECOVERY_S + 10, "breaker CLOSED and the model answering")
    # Abandoned calls of an earlier test finish once the fault is cleared: a
    # call that needs both bulkhead slots goes through only then.
    with ThreadPoolExecutor(MAX_INFLIGHT) as pool:
        wait_until(lambda: all(ok for ok, _, _ in pool.map(lambda _: call(server), range(MAX_INFLIGHT))),
                   10, "bulkhead free")
    yield
    set_fault(faults, "ok")


def test_answers_are_the_models_own_with_its_own_parameters(server):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    ok, y, _ = call(server, x)
    assert ok, y
    np.testing.assert_array_equal(y, SCALE * x)


def test_concurrent_callers_each_get_their_own_answer(server):
    xs = [np.full((1, 4), i, np.float32) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda x: call(server, x), xs))
    for x, (ok, y, _) in zip(xs, results):
        assert ok, y
        np.testing.assert_array_equal(y, SCALE * x)


def test_hung_execute_is_unavailable_by_timeout_ms_and_counted_by_the_bulkhead(server, faults):
    set_fault(faults, "hang")
    for _ in range(MAX_INFLIGHT):  # each one abandons a worker still inside the model
        # Apart by more than the guard's idle gap (a spacing, not a wait for a state): a request
        # right behind a timed-out execute may have queued behind it, and is answered as expired instead.
        time.sleep(2 * QUEUE_IDLE_GAP_S)
        ok, error, seconds = call(server)
        assert not ok
        assert error.status() == "StatusCode.UNAVAILABLE", error
        assert f"did not answer within timeout_ms={int(TIMEOUT_S * 1000)}" in error.message()
        assert TIMEOUT_S * 0.9 <= seconds < DEADLINE_S, seconds
    before = executes(faults)
    time.sleep(2 * QUEUE_IDLE_GAP_S)  # the same spacing
    ok, error, seconds = call(server)
    assert not ok and "overloaded" in error.message(), error
    assert error.status() == "StatusCode.UNAVAILABLE"
    assert seconds < TIMEOUT_S, seconds  # refused at once: the bulkhead is full of abandoned calls
    assert executes(faults) == before  # the model's code was not entered


def test_no_duplicate_or_late_answer_after_a_timeout(server, faults):
    """One answer per request on a stream; the abandoned call's late answer goes nowhere."""
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        set_fault(faults, "hang")
        client.async_stream_infer(MODEL, inputs(np.full((1, 4), 7, np.float32)), request_id="hung")
        result, error = answers.get(timeout=DEADLINE_S + 2)
        assert result is None and "did not answer within" in str(error), (result, error)
        returned = executes(faults, "returned")
        set_fault(faults, "ok")  # the abandoned execute now returns 14s
        wait_until(lambda: executes(faults, "returned") > returned, 5, "the abandoned execute returned")
        time.sleep(2 * QUEUE_IDLE_GAP_S)  # apart by more than the guard's idle gap (a spacing, as above)
        client.async_stream_infer(MODEL, inputs(np.full((1, 4), 3, np.float32)), request_id="fresh")
        result, error = answers.get(timeout=10)
        assert error is None, error
        assert result.get_response().id == "fresh"
        np.testing.assert_array_equal(result.as_numpy("Y"), np.full((1, 4), 3 * SCALE, np.float32))
        time.sleep(0.5)  # an observation window: nothing else may come in it (not a wait for a state)
        assert answers.empty(), answers.get()  # nothing else came, for either request
    finally:
        client.stop_stream()


def test_threshold_opens_and_then_rejects_fast_without_entering_the_model(server, faults):
    set_fault(faults, "error")
    for _ in range(FAILURE_THRESHOLD):
        ok, error, _ = call(server)
        assert not ok and "injected model failure" in error.message(), error
    assert state(server) is State.OPEN
    before = executes(faults)
    for _ in range(20):
        ok, error, seconds = call(server)
        assert not ok
        assert error.status() == "StatusCode.UNAVAILABLE"
        assert f"circuit breaker for model '{MODEL}' is OPEN" in error.message(), error
        assert seconds < TIMEOUT_S, seconds
    assert executes(faults) == before


def test_recovers_after_recovery_ms_with_a_good_trial_call(server, faults):
    set_fault(faults, "error")
    for _ in range(FAILURE_THRESHOLD):
        call(server)
    assert state(server) is State.OPEN
    set_fault(faults, "ok")
    assert not call(server)[0]  # still OPEN: recovery_ms has not passed
    opened_at = breaker_snapshot(server, MODEL).opened_at
    wait_until(lambda: time.monotonic() - opened_at > RECOVERY_S, RECOVERY_S + 5, "recovery_ms passed since it opened")
    ok, y, _ = call(server)  # the trial call
    assert ok, y
    assert state(server) is State.CLOSED


def test_exception_in_execute_is_a_failure_with_the_models_message(server, faults):
    set_fault(faults, "raise")
    ok, error, _ = call(server)
    assert not ok
    assert error.status() == "StatusCode.INTERNAL", error
    assert "injected exception in execute" in error.message(), error
    for _ in range(FAILURE_THRESHOLD - 1):
        call(server)
    assert state(server) is State.OPEN  # it counted


def test_client_errors_are_the_models_answers_and_never_trip(server):
    bad = np.full((1, 4), -1, np.float32)
    for _ in range(3 * FAILURE_THRESHOLD):
        ok, error, _ = call(server, bad)
        assert not ok
        assert error.status() == "StatusCode.INVALID_ARGUMENT", error
        assert "X must be non-negative" in error.message()
    assert state(server) is State.CLOSED
    assert call(server)[0]


def test_a_model_whose_initialize_raises_fails_its_load_with_its_message(server, repository):
    shutil.copytree(REPOS / "not_served" / "broken_init", repository / "broken_init")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as failed:
        client.load_model("broken_init", headers=server.grpc_admin_headers)
    assert "weights file /nonexistent/weights.pt is missing" in failed.value.message()
    assert not client.is_model_ready("broken_init")
    assert call(server)[0]  # the other model is untouched


# --- issue 20: an operator's override (`triton-guard breaker`) ------------------------------------


def breaker_cli(server, *args, env=None):
    return subprocess.run([str(CLI), "breaker", *args, "--url", server.grpc_url], capture_output=True, text=True,
                          timeout=60, env=env)  # fmt: skip


def override_gauge(server) -> float:
    return metric(server.metrics_url, BREAKER_OVERRIDE.name, model=MODEL)


def test_an_operator_forces_the_breaker_open_then_closed_then_back_to_auto(server, faults):
    try:
        opened = breaker_cli(server, MODEL, "open")
        assert opened.returncode == 0, opened.stderr
        assert opened.stdout.strip() == f"breaker for model '{MODEL}': OPEN, forced OPEN by an operator (was CLOSED, automatic)"
        before = executes(faults)
        ok, error, seconds = call(server)
        assert not ok and error.status() == "StatusCode.UNAVAILABLE" and seconds < 1.0
        assert error.message() == f"Service temporarily unavailable: circuit breaker for model '{MODEL}' was opened by an operator"
        assert executes(faults) == before  # the model's code is not entered
        shown = run_cli("status", "--url", server.grpc_url, "--json")
        report = json.loads(shown.stdout)
        breakers = next(c for c in report["report"]["checks"] if c["name"] == "breakers")
        assert breakers["value"][MODEL]["override"] == "FORCED_OPEN" and not breakers["ok"]
        assert "(opened by an operator)" in breakers["reason"]
        wait_until(lambda: override_gauge(server) == 1, 10, "triton_guard_breaker_override 1 on /metrics")

        closed = breaker_cli(server, MODEL, "close")
        assert closed.returncode == 0 and "CLOSED, forced CLOSED by an operator" in closed.stdout, closed.stderr
        set_fault(faults, "raise")
        for _ in range(2 * FAILURE_THRESHOLD):  # failures that would open it: nothing counts while forced closed
            assert "injected exception in execute" in call(server)[1].message()
        assert state(server) is State.CLOSED
        set_fault(faults, "ok")

        wrong = breaker_cli(server, MODEL, "auto", env={**os.environ, "TRITON_GUARD_API_KEY": "not-the-servers-key-0123"})
        assert wrong.returncode == 1 and "the API key is missing or wrong" in wrong.stderr
        unknown = breaker_cli(server, "nope", "open")
        assert unknown.returncode == 1 and "no breaker for model 'nope' (breakers:" in unknown.stderr
        assert f"'{MODEL}'" in unknown.stderr.split("breakers:")[1]
    finally:
        back = breaker_cli(server, MODEL, "auto")
    assert back.returncode == 0 and "automatic (was CLOSED, forced CLOSED by an operator)" in back.stdout, back.stderr
    assert call(server)[0]
    wait_until(lambda: override_gauge(server) == 0, 10, "triton_guard_breaker_override 0 on /metrics")
