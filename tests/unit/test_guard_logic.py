"""Guard.call: breaker, bulkhead and hard deadline around fake upstream calls.

A real CircuitBreaker on a MemoryStore, driven by a fake clock (no sleeping to
reach OPEN -> HALF_OPEN); the upstream is a plain Python function. A "hung"
upstream waits on a threading.Event that the test releases in teardown; the
guard itself must give up on it after timeout_ms (small here: 50 ms).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Executor, Future

import pytest

from tests import fakes

from triton_guard.guard.breaker import CircuitBreaker, Permit, State, Transition
from triton_guard.guard.failures import Failure, FailureClassifier
from triton_guard.guard.core import UNAVAILABLE_PREFIX, Code, Guard, GuardEvents
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.shared_state import MemoryStore

UPSTREAM = "classifier"
TIMEOUT_MS = 50
T0 = 1000.0

CLIENT_ERROR = "[request id: <id_unknown>] inference input 'X' data-type is 'INT32', but model 'classifier' expects 'FP32'"
STUB_DEAD = (
    "Failed to process the request(s) for model instance 'classifier_0_0', "
    "message: Stub process 'classifier_0_0' is not healthy."
)


class FakeClock(fakes.FakeClock):
    def __init__(self, now: float = T0) -> None:
        super().__init__(now)


class RecordingEvents(GuardEvents):
    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.durations: list[float | None] = []

    def rejected(self, reason: str) -> None:
        self.log.append(("rejected", reason))

    def completed(self, duration_s: float | None, failure: Failure | None) -> None:
        self.log.append(("completed", failure))
        self.durations.append(duration_s)

    def transitioned(self, transition: Transition) -> None:
        self.log.append(("transitioned", transition.from_state, transition.to_state, transition.reason))

    def take(self) -> list[tuple]:
        log, self.log = self.log, []
        return log


class Upstream:
    """Fake upstream calls; counts how often the guard actually called one."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()  # set in teardown: hung calls return then

    def answer(self, value="ANSWER"):
        def call(timeout_s: float):
            self.calls += 1
            return value

        return call

    def raises(self, exc: BaseException):
        def call(timeout_s: float):
            self.calls += 1
            raise exc

        return call

    def hangs(self):
        def call(timeout_s: float):
            self.calls += 1
            self.release.wait(timeout=30)  # bounded even if a test forgets to release
            return "LATE ANSWER"

        return call


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def events() -> RecordingEvents:
    return RecordingEvents()


@pytest.fixture
def upstream():
    fake = Upstream()
    yield fake
    fake.release.set()


@pytest.fixture
def make_guard(clock, store, events):
    guards: list[Guard] = []

    def factory(classifier: FailureClassifier | None = None, **overrides) -> Guard:
        config = GuardConfig(**{"timeout_ms": TIMEOUT_MS, "recovery_ms": 30_000, **overrides})
        breaker = CircuitBreaker(UPSTREAM, config, store, clock=clock)
        # The same fake clock for call durations: every call takes 0 s, never "slow".
        guard = Guard(UPSTREAM, config, breaker, classifier, events=events, clock=clock)
        guards.append(guard)
        return guard

    yield factory
    for guard in guards:
        guard.close()


def error_answer(answer):
    """BLS style: an answer that is a str is the upstream's error message."""
    return answer if isinstance(answer, str) else None


def wait_until_workers_idle(guard: Guard) -> None:
    """Block until every worker thread has finished its previous call, bookkeeping included.

    Each of the max_inflight workers must pick up one barrier task, and a worker
    only takes a new task after finishing (and accounting for) the one before.
    """
    n = guard.config.max_inflight
    barrier = threading.Barrier(n + 1, timeout=10)
    for _ in range(n):
        guard._workers.submit(barrier.wait)
    barrier.wait()


def open_breaker(guard: Guard, upstream: Upstream) -> None:
    for _ in range(guard.config.failure_threshold):
        guard.call(upstream.answer("upstream exploded"), error_answer)
    assert guard.breaker.snapshot().state is State.OPEN


# --- outcomes of one call ------------------------------------------------------


def test_success_passes_the_value_through(make_guard, upstream, events):
    guard = make_guard()
    value = {"PROBS": [0.1, 0.9]}
    result = guard.call(upstream.answer(value), error_answer)
    assert result.ok and result.code is Code.OK
    assert result.value is value
    assert result.failure is None and result.rejected is None and result.message == ""
    assert upstream.calls == 1
    assert events.take() == [("completed", None)]
    assert guard.inflight == 0


def test_upstream_gets_the_deadline_in_seconds(make_guard):
    seen = []
    guard = make_guard(timeout_ms=1234)
    guard.call(lambda timeout_s: seen.append(timeout_s))
    assert seen == [1.234]


def test_client_error_is_invalid_arg_with_tritons_message(make_guard, upstream):
    guard = make_guard()
    result = guard.call(upstream.answer(CLIENT_ERROR), error_answer)
    assert result.code is Code.INVALID_ARG
    assert result.failure is Failure.CLIENT_ERROR
    assert result.message == CLIENT_ERROR  # the client's own mistake, told as Triton wrote it
    assert result.value is None


def test_client_errors_never_count_against_the_breaker(make_guard, upstream):
    guard = make_guard(failure_threshold=2)
    for _ in range(10):
        assert guard.call(upstream.answer(CLIENT_ERROR), error_answer).code is Code.INVALID_ARG
    snap = guard.breaker.snapshot()
    assert snap.state is State.CLOSED
    assert snap.consecutive_failures == 0 and snap.failure_rate == 0.0
    # ... and do not hide real failures either: two upstream errors still open it.
    guard.call(upstream.answer("boom"), error_answer)
    guard.call(upstream.answer(CLIENT_ERROR), error_answer)  # success for the breaker: resets the run
    guard.call(upstream.answer("boom"), error_answer)
    assert guard.breaker.snapshot().state is State.CLOSED
    guard.call(upstream.answer("boom"), error_answer)
    assert guard.breaker.snapshot().state is State.OPEN


def test_upstream_error_is_internal_and_names_the_model(make_guard, upstream):
    guard = make_guard()
    result = guard.call(upstream.answer("injected upstream failure"), error_answer)
    assert result.code is Code.INTERNAL
    assert result.failure is Failure.UPSTREAM_ERROR
    assert result.message == "upstream model 'classifier' failed: injected upstream failure"
    assert guard.breaker.snapshot().consecutive_failures == 1


def test_dead_stub_is_unavailable(make_guard, upstream):
    guard = make_guard()
    result = guard.call(upstream.answer(STUB_DEAD), error_answer)
    assert result.code is Code.UNAVAILABLE
    assert result.failure is Failure.STUB_DEAD
    assert result.message == f"upstream model 'classifier' failed: {STUB_DEAD}"
    assert guard.breaker.snapshot().consecutive_failures == 1


@pytest.mark.parametrize(
    "message, code, failure",
    [
        ("Exceeds maximum queue size", Code.UNAVAILABLE, Failure.OVERLOADED),
        ("Request timeout expired", Code.UNAVAILABLE, Failure.TIMEOUT),
    ],
)
def test_upstream_queue_conditions_are_unavailable_and_count(make_guard, upstream, message, code, failure):
    guard = make_guard()
    result = guard.call(upstream.answer(message), error_answer)
    assert (result.code, result.failure) == (code, failure)
    assert guard.breaker.snapshot().consecutive_failures == 1


def test_custom_client_error_pattern_reaches_the_guard(make_guard, upstream):
    guard = make_guard(classifier=FailureClassifier(client_error_pattern="must be non-negative"))
    result = guard.call(upstream.answer("X must be non-negative"), error_answer)
    assert result.code is Code.INVALID_ARG
    assert guard.breaker.snapshot().consecutive_failures == 0


@pytest.mark.parametrize(
    "exc, code, failure, message",
    [
        (
            ValueError("inference request batch-size must be <= 8 for 'classifier'"),
            Code.INVALID_ARG,
            Failure.CLIENT_ERROR,
            "inference request batch-size must be <= 8 for 'classifier'",
        ),
        (
            RuntimeError("socket closed"),
            Code.INTERNAL,
            Failure.UPSTREAM_ERROR,
            "upstream model 'classifier' failed: socket closed",
        ),
        (
            RuntimeError(STUB_DEAD),
            Code.UNAVAILABLE,
            Failure.STUB_DEAD,
            f"upstream model 'classifier' failed: {STUB_DEAD}",
        ),
        (  # no message: the exception's type is all there is to tell
            KeyError(),
            Code.INTERNAL,
            Failure.UPSTREAM_ERROR,
            "upstream model 'classifier' failed: KeyError",
        ),
    ],
    ids=["client", "upstream", "stub_dead", "empty"],
)
def test_exceptions_are_classified_like_error_answers(make_guard, upstream, exc, code, failure, message):
    guard = make_guard()
    result = guard.call(upstream.raises(exc), error_answer)
    assert (result.code, result.failure, result.message) == (code, failure, message)
    expected_failures = 0 if failure is Failure.CLIENT_ERROR else 1
    assert guard.breaker.snapshot().consecutive_failures == expected_failures
    assert guard.inflight == 0


def test_hung_call_is_cut_off_at_timeout_ms(make_guard, upstream, events):
    guard = make_guard(timeout_ms=TIMEOUT_MS)
    started = time.monotonic()
    result = guard.call(upstream.hangs(), error_answer)
    elapsed = time.monotonic() - started

    assert TIMEOUT_MS / 1000 <= elapsed < 5.0  # waited for the deadline, not for the upstream
    assert result.code is Code.UNAVAILABLE
    assert result.failure is Failure.TIMEOUT
    assert result.message == "model 'classifier' did not answer within timeout_ms=50"
    assert events.take() == [("completed", Failure.TIMEOUT)]
    assert guard.breaker.snapshot().consecutive_failures == 1
    # The abandoned call still holds its slot until the upstream answers.
    assert guard.inflight == 1
    upstream.release.set()
    wait_until_workers_idle(guard)
    assert guard.inflight == 0


# --- bulkhead ----------------------------------------------------------------------


def test_bulkhead_rejects_at_once_when_every_slot_holds_a_hung_call(make_guard, upstream, events):
    max_inflight = 3
    guard = make_guard(max_inflight=max_inflight, failure_threshold=100)
    for _ in range(max_inflight):
        assert guard.call(upstream.hangs(), error_answer).failure is Failure.TIMEOUT
    assert guard.inflight == max_inflight
    assert upstream.calls == max_inflight
    events.take()

    result = guard.call(upstream.answer(), error_answer)

    assert upstream.calls == max_inflight  # refused without calling upstream (so without waiting)
    assert result.code is Code.UNAVAILABLE
    assert result.failure is Failure.OVERLOADED and result.rejected == "overloaded"
    assert result.message == "model 'classifier' overloaded: 3 calls in flight (max_inflight=3)"
    # It counts as a failure of the upstream: three timeouts and this one, in a row.
    assert guard.breaker.snapshot().consecutive_failures == max_inflight + 1
    assert events.take() == [("completed", Failure.OVERLOADED), ("rejected", "overloaded")]
    assert events.durations[-1] is None  # no upstream call was made: nothing to time

    upstream.release.set()
    wait_until_workers_idle(guard)
    assert guard.inflight == 0
    for _ in range(max_inflight + 1):
        assert guard.call(upstream.answer(7), error_answer).value == 7
    assert guard.breaker.snapshot().consecutive_failures == 0


class CallbacksLastExecutor(Executor):
    """Runs each call on a thread of its own, and hands its result to the caller
    *before* running the future's done-callbacks (they run on `run_callbacks()`).

    concurrent.futures allows exactly this order: `set_result` wakes the waiting
    caller, then invokes callbacks, so the caller may run first. Here it always does.
    """

    def __init__(self) -> None:
        self.pending: list = []
        self.threads: list[threading.Thread] = []

    def submit(self, fn, /, *args, **kwargs):
        future = _LateCallbackFuture(self.pending)

        def run() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        thread = threading.Thread(target=run)
        self.threads.append(thread)
        thread.start()
        return future

    def run_callbacks(self) -> None:
        for thread in self.threads:
            thread.join()
        while self.pending:
            callback, future = self.pending.pop(0)
            callback(future)


class _LateCallbackFuture(Future):
    def __init__(self, pending: list) -> None:
        super().__init__()
        self._pending = pending

    def add_done_callback(self, fn) -> None:
        self._pending.append((fn, self))


def test_a_returned_call_has_already_given_its_slot_back(make_guard, upstream):
    """With max_inflight=1, one caller calling again right away is always admitted."""
    guard = make_guard(max_inflight=1, failure_threshold=1_000)
    executor = CallbacksLastExecutor()
    guard._workers.shutdown()
    guard._workers = executor  # the guard's pool, with the scheduling above made certain

    first = guard.call(upstream.answer(1), error_answer)
    assert first.ok
    assert guard.inflight == 0
    second = guard.call(upstream.answer(2), error_answer)
    assert second.ok, second.message
    executor.run_callbacks()
    assert guard.inflight == 0  # and nothing is given back twice


# --- breaker ----------------------------------------------------------------------------


def test_open_breaker_rejects_without_calling_and_says_when_to_retry(make_guard, upstream, clock, events):
    guard = make_guard(failure_threshold=3, recovery_ms=30_000)
    open_breaker(guard, upstream)
    calls = upstream.calls
    clock.advance(12.5)
    events.take()

    result = guard.call(upstream.answer(), error_answer)

    assert upstream.calls == calls
    assert result.code is Code.UNAVAILABLE and result.rejected == "open"
    assert result.message.startswith(UNAVAILABLE_PREFIX)
    assert "'classifier'" in result.message
    assert "next trial call in 17.5 s" in result.message  # 30 s recovery - 12.5 s waited
    assert events.take() == [("rejected", "open")]


def test_half_open_with_every_trial_in_flight_rejects(make_guard, upstream, clock, events):
    guard = make_guard(failure_threshold=1, recovery_ms=1_000, half_open_max_calls=1)
    open_breaker(guard, upstream)
    clock.advance(1.0)
    inner = []

    def trial(timeout_s: float):
        # While this trial runs, another request arrives: no trial permit is left.
        inner.append(guard.call(upstream.answer(), error_answer))
        return ["trial answer"]

    events.take()
    outer = guard.call(trial, error_answer)

    assert outer.ok and outer.value == ["trial answer"]
    (rejected,) = inner
    assert rejected.code is Code.UNAVAILABLE and rejected.rejected == "half_open_full"
    assert rejected.message == (
        "Service temporarily unavailable: circuit breaker for model 'classifier' is HALF_OPEN "
        "with 1 trial call(s) in flight; retry shortly"
    )
    assert events.take() == [
        ("transitioned", State.OPEN, State.HALF_OPEN, "recovery_elapsed"),
        ("rejected", "half_open_full"),
        ("completed", None),
        ("transitioned", State.HALF_OPEN, State.CLOSED, "trials_succeeded"),
    ]
    assert guard.breaker.snapshot().state is State.CLOSED


def test_every_event_is_reported_exactly_once_through_a_full_cycle(make_guard, upstream, clock, events):
    guard = make_guard(failure_threshold=2, recovery_ms=10_000)

    guard.call(upstream.answer("boom"), error_answer)
    guard.call(upstream.answer("boom"), error_answer)
    assert events.take() == [
        ("completed", Failure.UPSTREAM_ERROR),
        ("completed", Failure.UPSTREAM_ERROR),
        ("transitioned", State.CLOSED, State.OPEN, "consecutive_failures"),
    ]

    guard.call(upstream.answer(), error_answer)
    assert events.take() == [("rejected", "open")]

    # Recovery elapsed: acquire() itself moves OPEN -> HALF_OPEN; the trial fails.
    clock.advance(10.0)
    guard.call(upstream.answer("boom"), error_answer)
    assert events.take() == [
        ("transitioned", State.OPEN, State.HALF_OPEN, "recovery_elapsed"),
        ("completed", Failure.UPSTREAM_ERROR),
        ("transitioned", State.HALF_OPEN, State.OPEN, "trial_failed"),
    ]

    clock.advance(10.0)
    assert guard.call(upstream.answer(1), error_answer).value == 1
    assert events.take() == [
        ("transitioned", State.OPEN, State.HALF_OPEN, "recovery_elapsed"),
        ("completed", None),
        ("transitioned", State.HALF_OPEN, State.CLOSED, "trials_succeeded"),
    ]
    assert guard.breaker.snapshot().state is State.CLOSED


def test_expired_trial_lease_is_reported_then_rejected(make_guard, upstream, clock, store, events):
    guard = make_guard(failure_threshold=1, recovery_ms=1_000, timeout_ms=TIMEOUT_MS)
    open_breaker(guard, upstream)
    clock.advance(1.0)
    # Another guard process on the same breaker took the trial and died with it.
    other = CircuitBreaker(UPSTREAM, guard.config, store, clock=clock)
    assert isinstance(other.acquire(), Permit)
    clock.advance(other.trial_lease_s + 0.001)
    events.take()
    calls = upstream.calls

    result = guard.call(upstream.answer(), error_answer)

    assert upstream.calls == calls
    assert result.code is Code.UNAVAILABLE and result.rejected == "open"
    assert result.message.startswith(f"{UNAVAILABLE_PREFIX}: circuit breaker for model 'classifier' is OPEN")
    assert events.take() == [
        ("transitioned", State.HALF_OPEN, State.OPEN, "trial_lease_expired"),
        ("rejected", "open"),
    ]
