"""Scenarios of other breakers' test suites, run on this breaker with an injected clock (written anew).

Each test names the suite whose scenario it ports: pybreaker, aiobreaker
(pybreaker for asyncio), purgatory, fabfuel/circuitbreaker and resilience4j's
CircuitBreakerStateMachineTest. Where this breaker means something else on
purpose the test says so and asserts ours; docs/breaker.md lists the
differences. Both stores: a dict in one process and the file every guard
process of a server shares.
"""

from __future__ import annotations

import pytest

from tests import fakes
from triton_guard.guard.breaker import CircuitBreaker
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.policy import GuardEvents, GuardPolicy
from triton_guard.guard.failures import Failure
from triton_guard.guard.record import Override, Permit, Rejection, State, Transition
from triton_guard.guard.shared_state import SharedFileStore
from triton_guard.guard.store import MemoryStore

FAST_S = 0.001


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    return MemoryStore() if request.param == "memory" else SharedFileStore(tmp_path / "state")


@pytest.fixture
def clock():
    return fakes.FakeClock(500.0)


@pytest.fixture
def make(store, clock):
    def factory(**overrides) -> CircuitBreaker:
        # No window trips unless a test asks: the peers' basic scenarios count failures in a row.
        settings = {"failure_rate_threshold": 1.0, "minimum_calls": 20, "recovery_ms": 60_000, **overrides}
        return CircuitBreaker("peer", GuardConfig(**settings), store, clock)

    return factory


def call(breaker, ok=True, duration_s=FAST_S):
    got = breaker.acquire()
    if not got.allowed:
        return got
    return breaker.record(got, success=ok, duration_s=duration_s)


def state(breaker) -> State:
    return breaker.snapshot().state


# --- pybreaker / aiobreaker -----------------------------------------------------------------


def test_pybreaker_successful_calls_keep_it_closed_with_no_failure_counted(make):
    breaker = make(failure_threshold=3)
    for _ in range(10):
        assert call(breaker) is None
    assert (state(breaker), breaker.snapshot().consecutive_failures) == (State.CLOSED, 0)


def test_pybreaker_one_failed_call_is_counted_and_a_success_resets_the_counter(make):
    breaker = make(failure_threshold=3)
    call(breaker, ok=False)
    assert (state(breaker), breaker.snapshot().consecutive_failures) == (State.CLOSED, 1)
    call(breaker)
    assert breaker.snapshot().consecutive_failures == 0


def test_pybreaker_several_failed_calls_open_on_exactly_fail_max(make):
    breaker = make(failure_threshold=3)
    assert call(breaker, ok=False) is None and call(breaker, ok=False) is None
    assert call(breaker, ok=False).to_state is State.OPEN  # the third one trips (pybreaker raises there)
    assert isinstance(breaker.acquire(), Rejection)


def test_pybreaker_failed_call_after_the_timeout_reopens(make, clock):
    breaker = make(failure_threshold=3, recovery_ms=60_000)
    for _ in range(3):
        call(breaker, ok=False)
    clock.advance(60)
    transition = call(breaker, ok=False)  # the one trial call, failing
    assert transition == Transition(State.HALF_OPEN, State.OPEN, clock.now, "trial_failed")
    assert isinstance(breaker.acquire(), Rejection)


def test_pybreaker_successful_call_after_the_timeout_closes_with_no_failure_counted(make, clock):
    breaker = make(failure_threshold=3)
    for _ in range(3):
        call(breaker, ok=False)
    clock.advance(60)
    assert call(breaker).to_state is State.CLOSED
    assert breaker.snapshot().consecutive_failures == 0


def test_aiobreaker_the_timeout_only_elapses_on_the_next_call_not_before(make, clock):
    breaker = make(failure_threshold=1)
    call(breaker, ok=False)
    clock.advance(3600)
    assert state(breaker) is State.OPEN  # nothing moves it meanwhile (resilience4j: automatic transition off)
    got = breaker.acquire()
    assert got.transition.reason == "recovery_elapsed" and got.trial


def test_pybreaker_manual_open_and_close_are_an_operators_override(make, clock):
    breaker = make(failure_threshold=1)
    breaker.force(Override.FORCED_OPEN)  # pybreaker: breaker.open()
    assert breaker.acquire().reason == "forced_open"
    breaker.force(Override.FORCED_CLOSED)  # pybreaker: breaker.close()
    assert call(breaker, ok=False) is None and state(breaker) is State.CLOSED
    assert breaker.snapshot().consecutive_failures == 0


def test_pybreaker_listeners_see_every_state_change_once_in_order(make, clock):
    seen = []

    class Listener(GuardEvents):
        def transitioned(self, transition: Transition) -> None:
            seen.append((transition.from_state, transition.to_state))

    breaker = make(failure_threshold=2, recovery_ms=1000)
    policy = GuardPolicy("peer", breaker.config, breaker, events=Listener(), clock=clock)

    def guarded(failure):
        permit = policy.admit()
        if isinstance(permit, Permit):
            policy.finished(permit, 1, FAST_S, failure, "boom" if failure else None)

    guarded(Failure.UPSTREAM_ERROR), guarded(Failure.UPSTREAM_ERROR)
    clock.advance(1)
    guarded(Failure.UPSTREAM_ERROR)  # the trial fails
    clock.advance(1)
    guarded(None)
    assert seen == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN), (State.HALF_OPEN, State.OPEN),
                    (State.OPEN, State.HALF_OPEN), (State.HALF_OPEN, State.CLOSED)]  # fmt: skip


def test_pybreaker_excluded_errors_never_count(make, clock):
    # pybreaker's `exclude`, purgatory's `exclude`, fabfuel's `expected_exception`: here a client's mistake.
    breaker = make(failure_threshold=1)
    policy = GuardPolicy("peer", breaker.config, breaker, clock=clock)
    for _ in range(5):
        permit = policy.admit()
        result = policy.finished(permit, 1, FAST_S, policy.classify("unexpected shape for input 'X'"), "bad shape")
        assert result.failure is Failure.CLIENT_ERROR
    assert state(breaker) is State.CLOSED


def test_pybreaker_success_threshold_needs_that_many_good_trials(make, clock):
    # pybreaker's success_threshold, resilience4j's permittedNumberOfCallsInHalfOpenState: half_open_max_calls.
    breaker = make(failure_threshold=1, half_open_max_calls=3)
    call(breaker, ok=False)
    clock.advance(60)
    assert call(breaker) is None and call(breaker) is None
    assert state(breaker) is State.HALF_OPEN
    assert call(breaker).to_state is State.CLOSED


def test_pybreaker_shared_storage_one_breakers_trip_is_every_breakers(store, clock):
    # pybreaker's CircuitRedisStorage, purgatory's shared storage: here every guard process shares the file.
    config = GuardConfig(failure_threshold=2)
    first, second = CircuitBreaker("shared", config, store, clock), CircuitBreaker("shared", config, store, clock)
    call(first, ok=False)
    assert call(second, ok=False).to_state is State.OPEN  # the failures add up across both
    assert isinstance(first.acquire(), Rejection)


# --- purgatory ------------------------------------------------------------------------------------


def test_purgatory_an_open_breaker_stays_open_for_its_whole_ttl(make, clock):
    breaker = make(failure_threshold=1, recovery_ms=30_000)
    call(breaker, ok=False)
    for waited in (0.0, 10.0, 29.999):
        clock.now = 500.0 + waited
        assert breaker.acquire().reason == "open"
    clock.now = 530.0
    assert breaker.acquire().trial


def test_purgatory_only_consecutive_failures_trip(make):
    breaker = make(failure_threshold=3)
    for _ in range(10):
        call(breaker, ok=False), call(breaker, ok=False), call(breaker)  # two in a row, never three
    assert state(breaker) is State.CLOSED


def test_purgatory_a_half_open_failure_reopens_for_a_new_ttl(make, clock):
    breaker = make(failure_threshold=1, recovery_ms=10_000)
    call(breaker, ok=False)
    clock.advance(10)
    call(breaker, ok=False)  # the trial fails: OPEN again, the ttl starts over
    clock.advance(9.9)
    assert breaker.acquire().reason == "open"
    clock.advance(0.1)
    assert breaker.acquire().trial


# --- fabfuel/circuitbreaker -------------------------------------------------------------------------


def test_fabfuel_calls_after_the_threshold_never_reach_the_function(make):
    breaker = make(failure_threshold=2)
    called = []

    def guarded(ok):
        got = breaker.acquire()
        if got.allowed:
            called.append(ok)
            breaker.record(got, success=ok, duration_s=FAST_S)

    for _ in range(2):
        guarded(False)
    for _ in range(5):
        guarded(True)
    assert called == [False, False]


def test_fabfuel_open_remaining_counts_down_to_the_trial(make, clock):
    breaker = make(failure_threshold=1, recovery_ms=30_000)
    call(breaker, ok=False)
    remaining = []
    for _ in range(3):
        remaining.append(breaker.acquire().retry_after_s)
        clock.advance(10)
    assert remaining == pytest.approx([30.0, 20.0, 10.0])


def test_fabfuel_a_good_half_open_call_closes_and_the_next_failures_count_afresh(make, clock):
    breaker = make(failure_threshold=2)
    call(breaker, ok=False), call(breaker, ok=False)
    clock.advance(60)
    call(breaker)
    assert call(breaker, ok=False) is None  # one failure after closing: not yet the threshold
    assert call(breaker, ok=False).to_state is State.OPEN


# --- resilience4j CircuitBreakerStateMachineTest -------------------------------------------------------


def test_resilience4j_only_four_test_requests_are_permitted_in_half_open(make, clock):
    breaker = make(failure_threshold=1, half_open_max_calls=4)
    call(breaker, ok=False)
    clock.advance(60)
    permits = [breaker.acquire() for _ in range(6)]
    assert [p.allowed for p in permits] == [True, True, True, True, False, False]
    assert permits[4].reason == "half_open_full"


def test_resilience4j_opens_on_the_failure_rate_only_after_the_minimum_number_of_calls(make, clock):
    breaker = make(failure_threshold=100, window_size=5, minimum_calls=5, failure_rate_threshold=0.5)
    for ok in (False, False, False, True):
        assert call(breaker, ok=ok) is None  # 3 of 4 failed, but fewer than minimum_calls
    assert call(breaker).reason == "failure_rate"  # 3 of 5: 60 % >= 50 %


def test_resilience4j_stays_closed_below_the_failure_rate_threshold(make):
    breaker = make(failure_threshold=100, window_size=10, minimum_calls=10, failure_rate_threshold=0.5)
    for i in range(50):
        assert call(breaker, ok=i % 3 != 0) is None  # one in three fails: 33 % < 50 %
    assert state(breaker) is State.CLOSED


def test_resilience4j_slow_calls_open_it_above_the_slow_call_rate(make):
    breaker = make(failure_threshold=100, window_size=4, minimum_calls=4, slow_call_ms=100, slow_call_rate_threshold=0.75)
    assert call(breaker, duration_s=0.2) is None and call(breaker, duration_s=0.2) is None and call(breaker) is None
    assert call(breaker, duration_s=0.2).reason == "slow_call_rate"  # 3 of 4 slow


def test_resilience4j_a_slow_call_in_half_open_reopens(make, clock):
    breaker = make(failure_threshold=1, slow_call_ms=100, half_open_max_calls=2)
    call(breaker, ok=False)
    clock.advance(60)
    assert call(breaker, duration_s=0.5).reason == "trial_slow"


def test_resilience4j_differs_one_failed_trial_of_four_reopens_at_once(make, clock):
    # resilience4j waits for all four trials and compares their failure rate with the
    # threshold (1 of 4 < 50 %: CLOSED). Here one failed trial re-opens at once.
    breaker = make(failure_threshold=1, half_open_max_calls=4)
    call(breaker, ok=False)
    clock.advance(60)
    trials = [breaker.acquire() for _ in range(4)]
    assert breaker.record(trials[0], success=False, duration_s=FAST_S).reason == "trial_failed"
    for trial in trials[1:]:
        assert breaker.record(trial, success=True, duration_s=FAST_S) is None  # stale: an older generation
    assert state(breaker) is State.OPEN


def test_resilience4j_differs_a_call_that_began_before_the_trip_changes_nothing_after_it(make):
    # resilience4j records such a call in the OPEN state's metrics; here it is stale.
    breaker = make(failure_threshold=2)
    early = breaker.acquire()
    call(breaker, ok=False), call(breaker, ok=False)
    before = breaker.snapshot()
    assert breaker.record(early, success=False, duration_s=FAST_S) is None
    assert breaker.snapshot() == before


def test_resilience4j_disabled_permits_everything_and_records_nothing_forced_open_denies_everything(make, clock):
    breaker = make(failure_threshold=1)
    breaker.force(Override.FORCED_CLOSED)  # DISABLED
    for _ in range(5):
        assert call(breaker, ok=False) is None
    assert breaker.snapshot().calls_in_window == 0
    breaker.force(Override.FORCED_OPEN)  # FORCED_OPEN
    clock.advance(3600)
    assert all(breaker.acquire().reason == "forced_open" for _ in range(5))


def test_resilience4j_reset_returns_to_closed_with_fresh_metrics(make, clock):
    # resilience4j's reset(): here an operator's close, then auto.
    breaker = make(failure_threshold=3)
    call(breaker, ok=False), call(breaker, ok=False)
    breaker.force(Override.FORCED_CLOSED)
    breaker.force(Override.AUTO)
    snap = breaker.snapshot()
    assert (snap.state, snap.consecutive_failures, snap.calls_in_window, snap.override) == (State.CLOSED, 0, 0, Override.AUTO)


def test_resilience4j_release_permission_gives_an_unused_trial_back(make, clock):
    breaker = make(failure_threshold=1, half_open_max_calls=1)
    call(breaker, ok=False)
    clock.advance(60)
    trial = breaker.acquire()
    assert not breaker.acquire().allowed
    breaker.release(trial)  # the call was never made
    assert breaker.acquire().trial  # the permission is back
    breaker.release(trial)  # releasing twice gives nothing back twice
    assert not breaker.acquire().allowed


def test_resilience4j_max_wait_in_half_open_is_the_trial_lease(make, clock):
    # resilience4j's maxWaitDurationInHalfOpenState: a trial that never reports does not hold HALF_OPEN forever.
    breaker = make(failure_threshold=1, timeout_ms=1000, recovery_ms=2000)
    call(breaker, ok=False)
    clock.advance(2)
    breaker.acquire()  # a trial whose process dies
    clock.advance(2.999)
    assert breaker.acquire().reason == "half_open_full"
    clock.advance(0.001)  # timeout_ms + recovery_ms after the trial
    got = breaker.acquire()
    assert got.reason == "open" and got.transition.reason == "trial_lease_expired"


def test_resilience4j_time_comes_from_the_injected_clock_only(make, clock):
    breaker = make(failure_threshold=1, recovery_ms=5000)
    call(breaker, ok=False)
    assert breaker.snapshot().opened_at == 500.0
    clock.advance(5)
    assert breaker.acquire().transition.at == 505.0
