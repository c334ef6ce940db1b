"""The guard against a real tritonserver with an upstream that a test breaks.

Limits in repos/guard_faults/faulty_guard/config.pbtxt: timeout 300 ms,
5 failures in a row open, recovery 1 s, max_inflight 3, slow calls > 150 ms,
rate trips over a window of 10 once it holds 6 calls, no active recovery.
repos/guard_faults/lagging_guard/config.pbtxt: called directly (no arrival
stamp, no queue policy), two instances, timeout 1 s, 5 failures, recovery
60 s (longer than any test: only active recovery, probes every 100 ms, can
close it), in front of `lagging`, which logs every execute.
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import wait_until
from tests.integration.conftest import FAULTS_ENV, REPOS, breaker_snapshot, breaker_state, metric, running_server, set_fault
from triton_guard.guard.breaker import State
from triton_guard.metrics import INFLIGHT_CALLS

pytestmark = pytest.mark.integration

REPO = REPOS / "guard_faults"
TIMEOUT_S = 0.300
RECOVERY_S = 1.0
FAILURE_THRESHOLD = 5
MAX_INFLIGHT = 3
WINDOW_SIZE = 10
MINIMUM_CALLS = 6
# timeout_ms plus scheduling noise on a loaded 2-core machine.
DEADLINE_S = TIMEOUT_S + 1.0
LAG_TIMEOUT_S = 1.0
# Scheduling noise on a loaded 2-core machine; far below a second timeout.
LAG_SLACK_S = 0.4


@pytest.fixture(scope="module")
def server(tmp_path_factory, faults):
    log = tmp_path_factory.mktemp("guard-server") / "tritonserver.log"
    with running_server(REPO, log, env={FAULTS_ENV: str(faults)}) as srv:
        yield srv


def call(server, model: str, x=None, target: str | None = None, client_timeout_s: float = 30.0):
    """(ok, Y or the error, seconds) for one request."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    x = np.ones((1, 4), np.float32) if x is None else x
    inputs = [grpcclient.InferInput("X", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    if target is not None:
        t = grpcclient.InferInput("TARGET", [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[target.encode()]], dtype=object))
        inputs.append(t)
    started = time.monotonic()
    try:
        result = client.infer(model, inputs, client_timeout=client_timeout_s)
        return True, result.as_numpy("Y"), time.monotonic() - started
    except InferenceServerException as exc:
        return False, exc, time.monotonic() - started


@pytest.fixture(autouse=True)
def healthy_upstream(server, faults):
    """Every test starts with the faults cleared and the breaker CLOSED."""
    for model in ("faulty", "stuck", "lagging"):
        set_fault(faults, model, "ok")

    def closed(guard: str, upstream: str):
        if breaker_state(server, upstream) is State.CLOSED:
            return True
        call(server, guard)  # a trial call once recovery has elapsed (or a probe answered)
        return False

    wait_until(lambda: closed("faulty_guard", "faulty"), RECOVERY_S + 5, "faulty's breaker CLOSED")
    wait_until(lambda: closed("lagging_guard", "lagging"), 10, "lagging's breaker CLOSED")
    # Good calls on both lagging_guard instances (if the batcher spreads them): probe inputs.
    # (One right after an earlier test's hung call may be told its deadline passed: see docs/breaker.md, "Deadlines".)
    good = 0
    for _ in range(5):
        with ThreadPoolExecutor(4) as pool:
            good += sum(ok for ok, _, _ in pool.map(lambda _: call(server, "lagging_guard"), range(8)))
        if good >= 8:
            break
    assert good >= 8
    # Push earlier tests' outcomes out of the window (a loaded machine may shed one).
    successes = sum(call(server, "faulty_guard")[0] for _ in range(WINDOW_SIZE))
    while successes < WINDOW_SIZE:
        successes += call(server, "faulty_guard")[0]
    yield
    for model in ("faulty", "stuck", "lagging"):
        set_fault(faults, model, "ok")


def test_healthy_upstream_answers_through_the_guard(server):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    ok, y, _ = call(server, "faulty_guard", x)
    assert ok, y
    np.testing.assert_array_equal(y, 2 * x)


def test_hung_upstream_every_caller_gets_unavailable_within_deadline(server, faults):
    set_fault(faults, "faulty", "hang")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: call(server, "faulty_guard"), range(8)))
    for ok, error, seconds in results:
        assert not ok
        assert error.status() == "StatusCode.UNAVAILABLE", error
        assert seconds < DEADLINE_S, (seconds, error)
    messages = [e.message() for _, e, _ in results]
    # At least the calls that reached the upstream name it and the limit.
    assert any("'faulty'" in m and "timeout_ms=300" in m for m in messages), messages


def test_eight_concurrent_hung_callers_open_the_breaker_after_them(server, faults):
    """Thresholds count requests: 8 callers that timed out are 8 failures, however they were batched."""
    set_fault(faults, "faulty", "hang")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: call(server, "faulty_guard"), range(8)))
    assert all(not ok and seconds < DEADLINE_S for ok, _, seconds in results), results
    # None of the 8 was refused by an open breaker: they waited, and timed out.
    assert not any("Service temporarily unavailable" in e.message() for _, e, _ in results)
    assert breaker_state(server, "faulty") is State.OPEN
    ok, error, seconds = call(server, "faulty_guard")
    assert not ok and "Service temporarily unavailable" in error.message(), error
    assert seconds < 0.1


def test_direct_caller_gets_its_answer_by_timeout_while_the_instances_are_blocked(server, faults):
    """No arrival stamp: requests queued behind two hung calls are still answered by timeout_ms."""
    set_fault(faults, "lagging", "hang")
    before = metric(server.metrics_url, INFLIGHT_CALLS.name, model="lagging")

    def calling_upstream(calls: int) -> bool:  # each call in flight holds a guard instance (published once a second)
        return metric(server.metrics_url, INFLIGHT_CALLS.name, model="lagging") >= before + calls

    with ThreadPoolExecutor(8) as pool:
        blocking = [pool.submit(call, server, "lagging_guard")]
        wait_until(lambda: calling_upstream(1), 5, "the first call in one guard instance")
        blocking.append(pool.submit(call, server, "lagging_guard"))  # the other instance
        wait_until(lambda: calling_upstream(2), 5, "the second call in the other guard instance")
        queued = [pool.submit(call, server, "lagging_guard") for _ in range(6)]  # wait in the guard's queue
        results = [f.result() for f in blocking + queued]
    for ok, error, seconds in results:
        assert not ok and error.status() == "StatusCode.UNAVAILABLE", error
        # A fresh budget after the wait would answer them after about 1.7 s.
        assert seconds < LAG_TIMEOUT_S + LAG_SLACK_S, (seconds, error.message())
    # Expired at once, or given what was left of their deadline and timed out in it.
    messages = [e.message() for _, e, _ in results]
    assert all("timeout_ms=1000" in m for m in messages), messages


def read_execute_log(faults: Path) -> list[tuple[float, int, str]]:
    """(start, requests, the mode it found) for every execute of `lagging` so far."""
    path = faults / "lagging.log"
    if not path.exists():
        return []
    return [(float(t), int(n), mode) for t, n, mode in (line.split() for line in path.read_text().splitlines())]


def test_active_recovery_closes_soon_after_the_upstream_answers_with_one_probe_in_flight(server, faults):
    set_fault(faults, "lagging", "error")
    wait_until(
        lambda: not call(server, "lagging_guard")[0] and breaker_state(server, "lagging") is State.OPEN,
        10,
        "lagging OPEN under errors",
    )
    earlier = len(read_execute_log(faults))
    set_fault(faults, "lagging", "hang")
    # The upstream holds a probe (probes every 100 ms); an error probe sent before the switch has come back.
    hung_from = wait_until(
        lambda: next((t for t, _, mode in read_execute_log(faults)[earlier:] if mode == "hang"), None),
        5,
        "a probe held by the hung upstream",
    )
    time.sleep(1.5)  # the stimulus: 15 probe intervals against a hung upstream
    assert breaker_state(server, "lagging") is State.OPEN
    fast = call(server, "lagging_guard")
    assert not fast[0] and "Service temporarily unavailable" in fast[1].message() and fast[2] < 0.1
    cleared = time.monotonic()
    set_fault(faults, "lagging", "ok")
    ok_at = wait_until(lambda: call(server, "lagging_guard")[0] and time.monotonic(), 5, "lagging answers again")
    # recovery_ms is 60 s: only a probe can have ended OPEN this early.
    assert ok_at - cleared < 2.0, ok_at - cleared
    assert breaker_state(server, "lagging") is State.CLOSED
    log = read_execute_log(faults)
    # One probe in flight: the upstream held one and nothing was queued behind
    # it (a second probe, from the other guard instance, would have started
    # right after the clear as a third execute).
    assert sum(n for t, n, _ in log if hung_from <= t < cleared) <= 1, log
    # After the clear: the held probe answered late (slower than timeout_ms, so
    # not proof of health), the next probe answered at once, then the trial call.
    assert sum(n for t, n, _ in log if cleared <= t <= ok_at) <= 2, log


def test_hang_opens_breaker_after_threshold_then_rejects_fast(server, faults):
    set_fault(faults, "faulty", "hang")
    outcomes = []
    for _ in range(3 * FAILURE_THRESHOLD):
        ok, error, seconds = call(server, "faulty_guard")
        assert not ok and seconds < DEADLINE_S
        outcomes.append(error.message())
        if "Service temporarily unavailable" in error.message():
            break
    # Timeouts (a request's deadline passing before the guard's call
    # included) count: OPEN right after the threshold.
    assert len(outcomes) == FAILURE_THRESHOLD + 1, outcomes
    assert breaker_state(server, "faulty") is State.OPEN
    rejection = outcomes[-1]
    assert "'faulty'" in rejection and "OPEN" in rejection and "next trial call in" in rejection
    fast = [call(server, "faulty_guard") for _ in range(20)]
    assert all(not ok and "Service temporarily unavailable" in e.message() for ok, e, _ in fast)
    assert all(e.status() == "StatusCode.UNAVAILABLE" for _, e, _ in fast)
    assert max(s for _, _, s in fast) < 0.1, [s for _, _, s in fast]


def recovered(server, upstream: str) -> None:
    """Waits until recovery_ms has passed since the breaker opened: the next call is the trial."""
    opened_at = breaker_snapshot(server, upstream).opened_at
    wait_until(lambda: time.monotonic() - opened_at >= RECOVERY_S, RECOVERY_S + 5, f"{upstream}'s recovery_ms passed")


def _trip(server, faults, mode):
    set_fault(faults, "faulty", mode)
    wait_until(
        lambda: not call(server, "faulty_guard")[0] and breaker_state(server, "faulty") is State.OPEN,
        10,
        f"OPEN under {mode}",
    )


def test_error_opens_then_a_good_trial_closes(server, faults):
    _trip(server, faults, "error")
    set_fault(faults, "faulty", "ok")
    ok, error, _ = call(server, "faulty_guard")
    assert not ok and "Service temporarily unavailable" in error.message()
    recovered(server, "faulty")
    ok, y, _ = call(server, "faulty_guard")  # the trial call
    assert ok, y
    assert breaker_state(server, "faulty") is State.CLOSED


def test_a_bad_trial_reopens(server, faults):
    _trip(server, faults, "error")
    recovered(server, "faulty")
    ok, error, _ = call(server, "faulty_guard")  # the trial call reaches the upstream
    assert not ok and "injected upstream failure" in error.message()
    assert breaker_state(server, "faulty") is State.OPEN
    ok, error, seconds = call(server, "faulty_guard")
    assert not ok and "Service temporarily unavailable" in error.message() and seconds < 0.1


def test_upstream_error_is_reported_with_the_upstream_named(server, faults):
    set_fault(faults, "faulty", "error")
    ok, error, _ = call(server, "faulty_guard")
    assert not ok
    assert error.status() == "StatusCode.INTERNAL"
    assert "upstream model 'faulty' failed" in error.message() and "injected upstream failure" in error.message()


def test_slow_calls_trip_the_slow_call_rate(server, faults):
    set_fault(faults, "faulty", "slow", slow_ms=200)  # answers, but slower than slow_call_ms=150
    answered = 0
    while answered <= WINDOW_SIZE:
        ok, error, _ = call(server, "faulty_guard")
        if not ok:
            break
        answered += 1
    # The window held 10 fast calls: on a quiet machine the rate reaches 0.75
    # at the 8th slow one; a loaded one may make a "fast" call slow too.
    assert 1 <= answered <= 8
    assert "Service temporarily unavailable" in error.message()
    snapshot = breaker_snapshot(server, "faulty")
    assert snapshot.state is State.OPEN
    # Opened by the slow-call rate, not by failures: the calls were answered.
    assert snapshot.slow_call_rate >= 0.75 and snapshot.failure_rate < 0.5


def test_bad_client_input_never_trips_the_breaker(server):
    bad_value = -np.ones((1, 4), np.float32)  # the upstream's own bad-input error
    for _ in range(3 * FAILURE_THRESHOLD):
        ok, error, _ = call(server, "faulty_guard", bad_value)
        assert not ok
        assert error.status() == "StatusCode.INVALID_ARGUMENT", error
        assert "must be non-negative" in error.message()
    wrong_dtype = grpcclient.InferInput("X", [1, 4], "INT32")  # refused by Triton before the guard
    wrong_dtype.set_data_from_numpy(np.ones((1, 4), np.int32))
    for _ in range(FAILURE_THRESHOLD):
        with pytest.raises(InferenceServerException):
            grpcclient.InferenceServerClient(server.grpc_url).infer("faulty_guard", [wrong_dtype])
    assert breaker_state(server, "faulty") is State.CLOSED
    assert call(server, "faulty_guard")[0]


def test_hung_upstream_does_not_delay_another_guarded_model(server, faults):
    assert call(server, "healthy_guard")[0]  # a first call's one-off costs are not the point here
    set_fault(faults, "faulty", "hang")
    with ThreadPoolExecutor(4) as pool:
        hung = [pool.submit(call, server, "faulty_guard") for _ in range(3)]
        wait_until(lambda: metric(server.metrics_url, INFLIGHT_CALLS.name, model="faulty") > 0, 5,
                   "hung calls in the upstream")  # the guards publish their calls in flight once a second
        others = [call(server, "healthy_guard") for _ in range(10)]
        assert all(ok for ok, _, _ in others)
        assert max(s for _, _, s in others) < 0.2, [s for _, _, s in others]
        assert all(f.result()[2] < DEADLINE_S for f in hung)


def test_more_hung_calls_than_threads_do_not_starve_the_guard(server, faults):
    """`stuck` has no queue policy: every call to it hangs and keeps a worker thread.

    `router` guards `stuck` and `healthy` from one process (the library
    placement). 10 hung calls outnumber the 6 threads of asyncio's default
    executor on this machine; `healthy` must still answer through it.
    """
    set_fault(faults, "stuck", "hang")
    for _ in range(12):  # 10 time out and stay in flight, then the bulkhead refuses at once
        ok, error, seconds = call(server, "router", target="stuck")
        assert not ok and error.status() == "StatusCode.UNAVAILABLE" and seconds < DEADLINE_S
    assert "overloaded" in error.message() and "max_inflight=10" in error.message()
    assert seconds < 0.1
    for _ in range(5):
        ok, y, seconds = call(server, "router", target="healthy")
        assert ok, y
        assert seconds < 0.2
        np.testing.assert_array_equal(y, 3 * np.ones((1, 4), np.float32))
    set_fault(faults, "stuck", "ok")  # the hung calls drain; the bulkhead frees up
    wait_until(lambda: call(server, "router", target="stuck")[0], 5, "stuck answers again")


def test_dead_upstream_stub_counts_opens_and_the_guard_heals_it(server):
    dead_pid = server.stub_pids()["faulty_0_0"]
    os.kill(dead_pid, signal.SIGKILL)
    messages = []
    for _ in range(FAILURE_THRESHOLD + 1):
        ok, error, _ = call(server, "faulty_guard")
        assert not ok
        messages.append(error.message())
    # The first calls hang until the backend notices the dead stub; the guard
    # times them out (and its bulkhead refuses more): all count as failures.
    assert all(("timeout_ms=300" in m) or ("overloaded" in m) or ("is not healthy" in m) for m in messages[:-1])
    assert "Service temporarily unavailable" in messages[-1]
    assert breaker_state(server, "faulty") is State.OPEN
    # Triton 24.10 never restarts a dead stub: the guard that sees "Stub
    # process ... is not healthy" (even on a call it gave up on) reloads the
    # model, and the next trial call after the recovery period closes the breaker.
    started = time.monotonic()
    wait_until(lambda: call(server, "faulty_guard")[0], 20, "faulty answers again through the guard")
    print(f"healed {time.monotonic() - started:.1f} s after the breaker opened")
    # The first call to a fresh stub may be slower than slow_call_ms=150 and re-open once: wait for CLOSED.
    wait_until(
        lambda: call(server, "faulty_guard")[0] and breaker_state(server, "faulty") is State.CLOSED,
        10,
        "faulty's breaker CLOSED",
    )
    new_pid = server.stub_pids().get("faulty_0_0")
    assert new_pid and new_pid != dead_pid  # a new stub process, not the killed one


def test_bad_guard_parameter_fails_the_load_and_changes_nothing(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    config = client.get_model_config("faulty_guard", as_json=True)["config"]
    config["parameters"]["failure_threshold"] = {"string_value": "zero"}
    with pytest.raises(InferenceServerException) as info:
        client.load_model("faulty_guard", config=json.dumps(config), headers=server.grpc_admin_headers)
    assert "failure_threshold" in info.value.message()
    assert client.is_model_ready("faulty_guard")
    assert call(server, "faulty_guard")[0]
