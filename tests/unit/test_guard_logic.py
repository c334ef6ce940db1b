"""Guard.call: breaker, bulkhead and hard deadline around fake upstream calls.

A real CircuitBreaker on a MemoryStore, driven by a fake clock (no sleeping to
reach OPEN -> HALF_OPEN); the upstream is a plain Python function. A "hung"
upstream waits on a threading.Event that the test releases in teardown; the
guard itself must give up on it after timeout_ms (small here: 50 ms).
"""

from __future__ import annotations

import threading
import time

import pytest

from tests import fakes
from tests.conftest import wait_until

from triton_guard.guard.breaker import CircuitBreaker, Permit, State, Transition
from triton_guard.guard.failures import Failure, FailureClassifier
from triton_guard.guard.core import ExecuteQueue, Guard
from triton_guard.guard.policy import UNAVAILABLE_PREFIX, Code, GuardEvents, GuardPolicy
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.store import MemoryStore

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

    def rejected(self, reason: str, requests: int = 1) -> None:
        self.log.append(("rejected", reason) if requests == 1 else ("rejected", reason, requests))

    def completed(self, duration_s: float | None, failure: Failure | None, requests: int = 1) -> None:
        self.log.append(("completed", failure) if requests == 1 else ("completed", failure, requests))
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
        guard = Guard(GuardPolicy(UPSTREAM, config, breaker, classifier, events=events, clock=clock))
        guards.append(guard)
        return guard

    yield factory
    for guard in guards:
        guard.close()


def error_answer(answer):
    """BLS style: an answer that is a str is the upstream's error message."""
    return answer if isinstance(answer, str) else None


def wait_until_workers_idle(guard: Guard) -> None:
    """Block until every released hung call has returned and given its worker back."""
    wait_until(lambda: guard.inflight == 0, 10, "every worker idle")


def open_breaker(guard: Guard, upstream: Upstream) -> None:
    for _ in range(guard.policy.config.failure_threshold):
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
    # The guard refusing itself says nothing about the upstream: the three timeouts, not four.
    assert guard.breaker.snapshot().consecutive_failures == max_inflight
    assert events.take() == [("rejected", "overloaded")]  # no upstream call was made: nothing completed

    upstream.release.set()
    wait_until_workers_idle(guard)
    assert guard.inflight == 0
    for _ in range(max_inflight + 1):
        assert guard.call(upstream.answer(7), error_answer).value == 7
    assert guard.breaker.snapshot().consecutive_failures == 0


def test_a_returned_call_has_already_given_its_slot_back(make_guard, upstream):
    """With max_inflight=1, one caller calling again right away is always admitted."""
    guard = make_guard(max_inflight=1, failure_threshold=1_000)
    for i in range(200):
        result = guard.call(upstream.answer(i), error_answer)
        assert result.ok and result.value == i, result.message
        assert guard.inflight == 0  # the worker was idle again before its caller woke


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
    other = CircuitBreaker(UPSTREAM, guard.policy.config, store, clock=clock)
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


# --- requests, not calls ----------------------------------------------------------------


def test_a_failed_call_of_five_requests_opens_a_threshold_five_breaker(make_guard, upstream, events):
    guard = make_guard(failure_threshold=5)
    result = guard.call(upstream.answer("boom"), error_answer, requests=5)
    assert result.failure is Failure.UPSTREAM_ERROR
    assert guard.breaker.snapshot().state is State.OPEN
    assert events.take() == [
        ("completed", Failure.UPSTREAM_ERROR, 5),
        ("transitioned", State.CLOSED, State.OPEN, "consecutive_failures"),
    ]
    assert guard.call(upstream.answer(), error_answer, requests=3).rejected == "open"
    assert events.take() == [("rejected", "open", 3)]


def test_a_hung_call_of_eight_requests_is_eight_timeouts(make_guard, upstream):
    guard = make_guard(failure_threshold=5)
    assert guard.call(upstream.hangs(), error_answer, requests=8).failure is Failure.TIMEOUT
    snap = guard.breaker.snapshot()
    assert snap.state is State.OPEN and snap.consecutive_failures == 8


def test_a_full_bulkhead_fails_every_request_of_the_call(make_guard, upstream, events):
    guard = make_guard(max_inflight=1, failure_threshold=100)
    guard.call(upstream.hangs(), error_answer)
    events.take()
    assert guard.call(upstream.answer(), error_answer, requests=4).rejected == "overloaded"
    assert events.take() == [("rejected", "overloaded", 4)]
    assert guard.breaker.snapshot().consecutive_failures == 1  # the hung call's timeout only


def test_an_upstream_queue_expiry_reads_as_a_timeout_of_the_guard(make_guard, upstream):
    guard = make_guard()
    result = guard.call(upstream.answer("Request timeout expired"), error_answer)
    assert result.code is Code.UNAVAILABLE and result.failure is Failure.TIMEOUT
    assert result.message == f"model 'classifier' did not answer within timeout_ms={TIMEOUT_MS} (Request timeout expired)"


def test_a_deadline_already_passed_makes_no_upstream_call(make_guard, upstream, clock):
    guard = make_guard(failure_threshold=5)
    result = guard.call(upstream.answer(), error_answer, requests=2, deadline_s=clock.now)
    assert result.failure is Failure.TIMEOUT and upstream.calls == 0
    assert guard.breaker.snapshot().consecutive_failures == 2


def test_the_call_gets_what_is_left_of_the_deadline(make_guard, clock):
    seen = []
    guard = make_guard(timeout_ms=1000)
    guard.call(seen.append, deadline_s=clock.now + 0.25)
    guard.call(seen.append, deadline_s=clock.now + 5.0)  # never more than timeout_ms
    assert seen == [0.25, 1.0]


# --- call_requests: one execute's requests ------------------------------------------------


class Batches:
    """upstream_call(indices, timeout_s) for call_requests; records every call."""

    def __init__(self, clock, takes_s: float = 0.0, answer=lambda indices: [f"y{i}" for i in indices]):
        self.clock = clock
        self.takes_s = takes_s
        self.answer = answer
        self.calls: list[tuple[tuple[int, ...], float]] = []

    def __call__(self, indices, timeout_s):
        self.calls.append((tuple(indices), round(timeout_s, 6)))
        self.clock.advance(self.takes_s)
        return self.answer(tuple(indices))


def parts_by_request(parts):
    return {i: part.result for part in parts for i in part.requests}


def test_stamped_requests_get_their_own_deadline_and_expired_ones_an_answer_at_once(make_guard, clock, events):
    guard = make_guard(timeout_ms=1000, failure_threshold=5)
    batches = Batches(clock)
    now = clock.now
    arrivals = [now - 1.2, now - 0.4, now - 0.1, now - 1.0]  # 0 and 3 are past their 1 s deadline
    parts = guard.call_requests(arrivals, batches, error_answer)
    assert batches.calls == [((1, 2), 0.6)]  # one call, until the earliest live deadline
    results = parts_by_request(parts)
    assert results[1].value == results[2].value == ["y1", "y2"]
    for i, waited in ((0, 1200), (3, 1000)):
        assert results[i].code is Code.UNAVAILABLE and results[i].rejected == "deadline"
        assert results[i].message == (
            f"model 'classifier': deadline timeout_ms=1000 passed after {waited} ms of waiting before the guard"
        )
    # The two whose callers saw a timeout count against the upstream; the call, as two requests.
    assert guard.breaker.snapshot().consecutive_failures == 0
    assert guard.breaker.snapshot().calls_in_window == 4
    assert ("rejected", "deadline", 2) in events.take()


def test_expired_requests_open_the_breaker_while_closed(make_guard, clock):
    guard = make_guard(timeout_ms=1000, failure_threshold=5)
    batches = Batches(clock)
    guard.call_requests([clock.now - 2.0] * 5, batches, error_answer)
    assert batches.calls == []
    assert guard.breaker.snapshot().state is State.OPEN


def test_a_batch_failing_with_a_client_error_is_retried_alone_inside_the_original_deadlines(make_guard, clock):
    guard = make_guard(timeout_ms=1000, failure_threshold=5)

    def answer(indices):
        if len(indices) > 1 or indices == (1,):
            return CLIENT_ERROR  # request 1 is the bad one
        return [f"y{indices[0]}"]

    batches = Batches(clock, takes_s=0.3, answer=answer)
    now = clock.now
    parts = guard.call_requests([now - 0.2, now, now], batches, error_answer)
    # The batch, then each alone with what is left of its own deadline, never a fresh timeout_ms.
    assert batches.calls == [((0, 1, 2), 0.8), ((0,), 0.5), ((1,), 0.4), ((2,), 0.1)]
    results = parts_by_request(parts)
    assert results[0].value == ["y0"] and results[2].value == ["y2"]
    assert results[1].code is Code.INVALID_ARG and results[1].message == CLIENT_ERROR
    snap = guard.breaker.snapshot()
    assert snap.calls_in_window == 3 and snap.consecutive_failures == 0  # one outcome per request


def test_a_split_retry_whose_deadline_passed_is_not_sent(make_guard, clock):
    guard = make_guard(timeout_ms=1000, failure_threshold=5)
    batches = Batches(clock, takes_s=0.6, answer=lambda indices: CLIENT_ERROR if len(indices) > 1 else ["ok"])
    now = clock.now
    parts = guard.call_requests([now, now - 0.3], batches, error_answer)
    assert batches.calls == [((0, 1), 0.7), ((0,), 0.4)]  # request 1's deadline passed during the batch
    results = parts_by_request(parts)
    assert results[0].value == ["ok"]
    assert results[1].failure is Failure.TIMEOUT
    assert results[1].message == "model 'classifier' did not answer within timeout_ms=1000"


def test_unbatched_upstream_gets_one_call_per_request(make_guard, clock):
    guard = make_guard(timeout_ms=1000)
    batches = Batches(clock)
    guard.call_requests([None, None], batches, error_answer, batch=False)
    assert [indices for indices, _ in batches.calls] == [(0,), (1,)]


def test_unstamped_requests_behind_a_timed_out_execute_are_answered_by_their_deadline(make_guard, clock, upstream):
    """A guard called directly: the next execute's requests waited while the last one hung."""
    guard = make_guard(timeout_ms=TIMEOUT_MS, failure_threshold=100)

    def hung(indices, timeout_s):
        clock.advance(timeout_s)  # the guard waits the whole deadline (a real 50 ms here)
        return upstream.hangs()(timeout_s)

    (first,) = guard.call_requests([None], hung, error_answer)
    assert first.result.failure is Failure.TIMEOUT
    clock.advance(0.002)  # Triton hands the instance its next batch at once
    batches = Batches(clock)
    parts = guard.call_requests([None, None], batches, error_answer)
    assert batches.calls == []  # they may have waited the whole deadline: not sent
    for result in parts_by_request(parts).values():
        assert result.rejected == "deadline"
        assert result.message == (
            f"model 'classifier': deadline timeout_ms={TIMEOUT_MS} passed after up to 52 ms of waiting in the guard's queue"
        )


def test_unstamped_requests_after_an_answered_execute_get_the_full_timeout(make_guard, clock):
    guard = make_guard(timeout_ms=1000)
    slow = Batches(clock, takes_s=0.8)  # slow but answered: the next caller is not penalised
    guard.call_requests([None], slow, error_answer)
    clock.advance(0.002)
    guard.call_requests([None], slow, error_answer)
    assert slow.calls == [((0,), 1.0), ((0,), 1.0)]


def test_an_idle_instance_resets_the_queue_bound(make_guard, clock, upstream):
    guard = make_guard(timeout_ms=TIMEOUT_MS, failure_threshold=100)

    def hung(indices, timeout_s):
        clock.advance(timeout_s)
        return upstream.hangs()(timeout_s)

    guard.call_requests([None], hung, error_answer)
    clock.advance(1.0)  # idle for a second: the next request arrived just now
    batches = Batches(clock)
    guard.call_requests([None], batches, error_answer)
    assert batches.calls == [((0,), TIMEOUT_MS / 1000)]


def test_execute_queue_bound():
    queue = ExecuteQueue(idle_gap_s=0.1)
    assert queue.earliest_arrival(10.0) == 10.0  # first execute
    queue.started(10.0)
    queue.timed_out()
    queue.ended(12.0)
    assert queue.earliest_arrival(12.05) == 10.0  # straight after a timed-out execute
    assert queue.earliest_arrival(12.2) == 12.2  # the instance idled in between
    queue.started(12.05)
    queue.ended(12.5)  # answered
    assert queue.earliest_arrival(12.51) == 12.51


def test_expired_requests_get_the_breakers_answer_when_it_is_open(make_guard, clock, upstream, events):
    guard = make_guard(timeout_ms=1000, failure_threshold=2, recovery_ms=30_000)
    open_breaker(guard, upstream)
    clock.advance(10.0)
    events.take()
    parts = guard.call_requests([clock.now - 2.0], Batches(clock), error_answer)
    (part,) = parts
    assert part.result.rejected == "open"
    assert part.result.message.startswith(UNAVAILABLE_PREFIX) and "next trial call in 20.0 s" in part.result.message
    assert events.take() == [("rejected", "open")]


# --- issue 20: the guard's own refusals say nothing about the upstream ----------------------------


def test_a_trial_refused_by_the_guards_own_bulkhead_goes_back_unused(make_guard, upstream, clock, events):
    guard = make_guard(max_inflight=1, failure_threshold=1, recovery_ms=1_000)
    assert guard.call(upstream.hangs(), error_answer).failure is Failure.TIMEOUT  # abandoned: holds the one slot
    assert guard.breaker.snapshot().state is State.OPEN
    clock.advance(1.0)
    refused = guard.call(upstream.answer(), error_answer)  # HALF_OPEN's trial permit, but no free slot
    assert refused.rejected == "overloaded" and upstream.calls == 1
    assert guard.breaker.snapshot().state is State.HALF_OPEN  # not re-opened without an upstream call
    upstream.release.set()
    wait_until_workers_idle(guard)
    assert guard.call(upstream.answer(7), error_answer).value == 7  # the trial permit was given back
    assert guard.breaker.snapshot().state is State.CLOSED
