"""Breaker state machine: exact permit/deny sequences, on both stores, no sleeps."""

from __future__ import annotations

import pytest

from tests import fakes

from triton_guard.guard.breaker import CircuitBreaker
from triton_guard.guard.record import BreakerSnapshot, Override, Permit, Rejection, State, Transition
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.shared_state import SharedFileStore
from triton_guard.guard.store import MemoryStore

T0 = 1000.0
FAST_S = 0.001  # well under any slow_call_ms used here


class FakeClock(fakes.FakeClock):
    def __init__(self, now: float = T0) -> None:
        super().__init__(now)


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryStore()
    return SharedFileStore(tmp_path / "state")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(store, clock):
    """make(**config overrides) -> CircuitBreaker on the shared store and clock."""

    def factory(name: str = "upstream", **overrides) -> CircuitBreaker:
        return CircuitBreaker(name, GuardConfig(**overrides), store, clock=clock)

    return factory


def permit(breaker: CircuitBreaker) -> Permit:
    got = breaker.acquire()
    assert isinstance(got, Permit), got
    assert got.transition is None
    return got


def call(breaker: CircuitBreaker, *, success: bool = True, duration_s: float = FAST_S):
    """One permitted call: acquire + record; returns record's transition."""
    return breaker.record(permit(breaker), success=success, duration_s=duration_s)


def trip(breaker: CircuitBreaker) -> Transition:
    """Open a CLOSED breaker by consecutive failures."""
    for _ in range(breaker.config.failure_threshold - 1):
        assert call(breaker, success=False) is None
    transition = call(breaker, success=False)
    assert transition is not None and transition.to_state == State.OPEN
    return transition


def recover(breaker: CircuitBreaker, clock: FakeClock) -> Permit:
    """From OPEN: wait out recovery; returns the first trial permit."""
    clock.advance(breaker.config.recovery_ms / 1000)
    got = breaker.acquire()
    assert isinstance(got, Permit) and got.trial
    assert got.transition == Transition(State.OPEN, State.HALF_OPEN, clock.now, "recovery_elapsed")
    return got


def rejected(breaker: CircuitBreaker, reason: str) -> Rejection:
    got = breaker.acquire()
    assert isinstance(got, Rejection), got
    assert got.reason == reason
    return got


# --- CLOSED -------------------------------------------------------------------------


def test_closed_stays_closed_under_successes(make):
    breaker = make()
    for _ in range(200):
        assert call(breaker) is None
    snap = breaker.snapshot()
    assert snap.state == State.CLOSED
    assert (snap.generation, snap.transitions) == (0, 0)
    assert snap.calls_in_window == breaker.config.window_size


def test_opens_on_exactly_the_threshold_failure(make, clock):
    breaker = make(failure_threshold=5)
    for _ in range(4):
        assert call(breaker, success=False) is None
    assert breaker.snapshot().state == State.CLOSED
    assert call(breaker, success=False) == Transition(
        State.CLOSED, State.OPEN, T0, "consecutive_failures"
    )
    got = rejected(breaker, "open")
    assert got.state == State.OPEN and got.transition is None


def test_success_resets_consecutive_failures(make):
    # failure_rate_threshold=1.0 keeps the window trip out of the way.
    breaker = make(failure_threshold=5, failure_rate_threshold=1.0)
    for _ in range(4):
        call(breaker, success=False)
    assert call(breaker) is None
    assert breaker.snapshot().consecutive_failures == 0
    for _ in range(4):
        assert call(breaker, success=False) is None
    assert breaker.snapshot().state == State.CLOSED
    assert call(breaker, success=False).reason == "consecutive_failures"


def test_failure_rate_trips_only_once_minimum_calls_reached(make, clock):
    breaker = make(failure_threshold=100, window_size=10, minimum_calls=6,
                   failure_rate_threshold=0.5)  # fmt: skip
    for success in (False, True, False, True, False):  # 3/5 failed, but 5 < 6 calls
        assert call(breaker, success=success) is None
    assert breaker.snapshot().failure_rate == pytest.approx(0.6)
    # Sixth call: 3/6 = 0.5 >= 0.5 with minimum_calls reached.
    assert call(breaker, success=True) == Transition(
        State.CLOSED, State.OPEN, T0, "failure_rate"
    )


def test_failure_rate_below_threshold_stays_closed(make):
    breaker = make(failure_threshold=100, window_size=10, minimum_calls=10,
                   failure_rate_threshold=0.5)  # fmt: skip
    for i in range(100):  # 4 of every 10 fail: 0.4 < 0.5
        assert call(breaker, success=i % 10 >= 4) is None
    assert breaker.snapshot().failure_rate == pytest.approx(0.4)


def test_window_slides_over_the_last_window_size_calls(make):
    breaker = make(failure_threshold=100, window_size=4, minimum_calls=4,
                   failure_rate_threshold=0.75)  # fmt: skip
    for success in (False, True, True, True):  # [F S S S] 0.25
        assert call(breaker, success=success) is None
    assert call(breaker, success=False) is None  # [S S S F]: first F evicted
    assert call(breaker, success=False) is None  # [S S F F] 0.5
    # [S F F F] 0.75: trips; without eviction it would be 4/7.
    assert call(breaker, success=False).reason == "failure_rate"


def test_slow_call_rate_trips(make):
    breaker = make(window_size=10, minimum_calls=5, slow_call_ms=100,
                   slow_call_rate_threshold=0.6)  # fmt: skip
    assert call(breaker, duration_s=0.1) is None  # exactly slow_call_ms: not slow
    assert breaker.snapshot().slow_call_rate == 0.0
    for _ in range(3):
        assert call(breaker, duration_s=0.2) is None  # 3 slow of 4 calls, < minimum
    # Fifth call, fast: 3/5 = 0.6 slow.
    assert call(breaker) == Transition(State.CLOSED, State.OPEN, T0, "slow_call_rate")


# --- OPEN ---------------------------------------------------------------------------


def test_open_rejects_with_decreasing_retry_after(make, clock):
    breaker = make(recovery_ms=30_000)
    trip(breaker)
    assert rejected(breaker, "open").retry_after_s == pytest.approx(30.0)
    clock.advance(10)
    assert rejected(breaker, "open").retry_after_s == pytest.approx(20.0)
    clock.advance(19.5)
    assert rejected(breaker, "open").retry_after_s == pytest.approx(0.5)


def test_half_open_exactly_at_recovery(make, clock):
    breaker = make(recovery_ms=30_000)
    trip(breaker)
    clock.advance(29.5)
    rejected(breaker, "open")
    clock.advance(0.5)  # exactly 30 s after opening
    got = breaker.acquire()
    assert isinstance(got, Permit) and got.trial
    assert got.transition == Transition(State.OPEN, State.HALF_OPEN, T0 + 30, "recovery_elapsed")
    assert breaker.snapshot().state == State.HALF_OPEN


def test_open_rebases_when_clock_is_behind_opened_at(make, clock):
    # A persistent state dir read after a reboot: monotonic time restarted.
    breaker = make(recovery_ms=30_000)
    trip(breaker)
    clock.now = 5.0
    assert rejected(breaker, "open").retry_after_s == pytest.approx(30.0)
    clock.advance(30)
    assert isinstance(breaker.acquire(), Permit)


# --- HALF_OPEN ------------------------------------------------------------------------


def test_half_open_admits_exactly_one_trial(make, clock):
    breaker = make(half_open_max_calls=1)
    trip(breaker)
    recover(breaker, clock)
    for _ in range(5):
        got = rejected(breaker, "half_open_full")
        assert got.state == State.HALF_OPEN
        assert got.retry_after_s == 0.0


def test_half_open_admits_exactly_three_trials_then_closes(make, clock):
    breaker = make(half_open_max_calls=3)
    trip(breaker)
    trials = [recover(breaker, clock), permit(breaker), permit(breaker)]
    assert all(t.trial for t in trials)
    rejected(breaker, "half_open_full")
    assert breaker.snapshot().trials_in_flight == 3
    assert breaker.record(trials[0], success=True, duration_s=FAST_S) is None
    assert breaker.record(trials[1], success=True, duration_s=FAST_S) is None
    rejected(breaker, "half_open_full")  # slots are not re-issued
    assert breaker.record(trials[2], success=True, duration_s=FAST_S) == Transition(
        State.HALF_OPEN, State.CLOSED, clock.now, "trials_succeeded"
    )
    snap = breaker.snapshot()
    assert snap.state == State.CLOSED
    assert (snap.calls_in_window, snap.consecutive_failures, snap.trials_in_flight) == (0, 0, 0)


def test_closed_after_trials_has_a_fresh_window(make, clock):
    breaker = make(failure_threshold=100, window_size=10, minimum_calls=10,
                   failure_rate_threshold=0.5)  # fmt: skip
    for _ in range(10):
        call(breaker, success=False)  # trips on the 10th by failure rate
    trial = recover(breaker, clock)
    breaker.record(trial, success=True, duration_s=FAST_S)
    # Old failures are gone: 9 more failures alone cannot reach minimum_calls.
    for _ in range(9):
        assert call(breaker, success=False) is None
    assert breaker.snapshot().calls_in_window == 9


def test_trial_failure_reopens_with_new_recovery_period(make, clock):
    breaker = make(recovery_ms=30_000)
    trip(breaker)
    trial = recover(breaker, clock)
    clock.advance(2)
    reopened_at = clock.now
    assert breaker.record(trial, success=False, duration_s=FAST_S) == Transition(
        State.HALF_OPEN, State.OPEN, reopened_at, "trial_failed"
    )
    assert rejected(breaker, "open").retry_after_s == pytest.approx(30.0)
    clock.advance(29)
    rejected(breaker, "open")
    clock.advance(1)
    assert breaker.acquire().trial
    assert breaker.snapshot().opened_at == reopened_at


def test_slow_trial_reopens(make, clock):
    breaker = make(slow_call_ms=100)
    trip(breaker)
    trial = recover(breaker, clock)
    transition = breaker.record(trial, success=True, duration_s=0.5)
    assert transition == Transition(State.HALF_OPEN, State.OPEN, clock.now, "trial_slow")


def test_one_failed_trial_of_three_reopens_and_others_go_stale(make, clock):
    breaker = make(half_open_max_calls=3)
    trip(breaker)
    first, second, third = recover(breaker, clock), permit(breaker), permit(breaker)
    assert breaker.record(first, success=True, duration_s=FAST_S) is None
    assert breaker.record(second, success=False, duration_s=FAST_S).to_state == State.OPEN
    reopened = breaker.snapshot()
    assert breaker.record(third, success=True, duration_s=FAST_S) is None  # stale: changes nothing
    assert breaker.snapshot() == reopened and reopened.state == State.OPEN


# --- generations ---------------------------------------------------------------------


def test_late_success_from_closed_does_not_close_open(make, clock):
    breaker = make()
    early = permit(breaker)  # started while CLOSED, reports after the trip
    trip(breaker)
    opened = breaker.snapshot()
    assert breaker.record(early, success=True, duration_s=FAST_S) is None
    assert breaker.snapshot() == opened and opened.state == State.OPEN


def test_late_success_does_not_count_as_trial(make, clock):
    breaker = make(half_open_max_calls=1)
    early = permit(breaker)
    trip(breaker)
    trial = recover(breaker, clock)
    assert breaker.record(early, success=True, duration_s=FAST_S) is None
    assert breaker.snapshot().state == State.HALF_OPEN
    assert breaker.record(trial, success=True, duration_s=FAST_S).to_state == State.CLOSED


def test_late_failure_does_not_reopen_fresh_closed(make, clock):
    breaker = make(failure_threshold=1)
    early = permit(breaker)
    trip(breaker)
    trial = recover(breaker, clock)
    breaker.record(trial, success=True, duration_s=FAST_S)
    assert breaker.record(early, success=False, duration_s=FAST_S) is None
    snap = breaker.snapshot()
    assert snap.state == State.CLOSED
    assert (snap.calls_in_window, snap.consecutive_failures) == (0, 0)


# --- trial lease -----------------------------------------------------------------------


def test_wedged_trial_lease_expires_and_recovery_continues(make, clock):
    breaker = make(timeout_ms=10_000, recovery_ms=30_000)
    assert breaker.trial_lease_s == 40.0
    trip(breaker)
    dead_trial = recover(breaker, clock)  # its process dies: never reported
    clock.advance(39.5)
    rejected(breaker, "half_open_full")
    clock.advance(0.5)
    got = rejected(breaker, "open")
    assert got.transition == Transition(State.HALF_OPEN, State.OPEN, clock.now, "trial_lease_expired")
    assert got.retry_after_s == pytest.approx(30.0)
    assert breaker.snapshot().opened_at == clock.now
    trial = recover(breaker, clock)  # a fresh recovery period, then a new trial
    assert breaker.record(dead_trial, success=True, duration_s=FAST_S) is None  # stale
    assert breaker.record(trial, success=True, duration_s=FAST_S).to_state == State.CLOSED


def test_lease_does_not_expire_once_trials_reported(make, clock):
    breaker = make(half_open_max_calls=2)
    trip(breaker)
    first = recover(breaker, clock)
    breaker.record(first, success=True, duration_s=FAST_S)
    clock.advance(1000)  # nothing outstanding: waiting for a second trial is fine
    second = permit(breaker)
    assert breaker.record(second, success=True, duration_s=FAST_S).to_state == State.CLOSED


# --- transitions and snapshot -------------------------------------------------------------


def test_each_transition_is_returned_exactly_once(make, clock):
    breaker = make(failure_threshold=2, recovery_ms=1_000, half_open_max_calls=1)
    seen: list[tuple[State, State]] = []

    def note(result) -> None:
        transition = result if isinstance(result, Transition) else getattr(result, "transition", None)
        if transition is not None:
            seen.append((transition.from_state, transition.to_state))

    def acquire_and_record(success: bool) -> None:
        got = breaker.acquire()
        note(got)
        if isinstance(got, Permit):
            note(breaker.record(got, success=success, duration_s=FAST_S))

    for success in (False, False, False, False):  # opens on the 2nd; the rest rejected
        acquire_and_record(success)
    clock.advance(1)
    acquire_and_record(False)  # -> HALF_OPEN, trial fails -> OPEN
    acquire_and_record(True)  # rejected
    clock.advance(1)
    acquire_and_record(True)  # -> HALF_OPEN, trial succeeds -> CLOSED
    acquire_and_record(True)
    C, O, H = State.CLOSED, State.OPEN, State.HALF_OPEN
    assert seen == [(C, O), (O, H), (H, O), (O, H), (H, C)]
    assert breaker.snapshot().transitions == 5
    assert breaker.snapshot().generation == 5


def test_breakers_sharing_a_store_share_one_state(make, clock):
    first, second = make(), make()  # two guard instances, one upstream
    trip(first)
    assert rejected(second, "open").state == State.OPEN
    other = make("another-upstream")
    assert isinstance(other.acquire(), Permit)


def test_snapshot_fields(make, clock):
    breaker = make(failure_threshold=3, window_size=10, minimum_calls=10,
                   slow_call_ms=100, half_open_max_calls=3)  # fmt: skip
    fresh = breaker.snapshot()
    assert fresh == BreakerSnapshot(
        name="upstream", state=State.CLOSED, since=0.0, opened_at=0.0,
        consecutive_failures=0, calls_in_window=0, failure_rate=0.0, slow_call_rate=0.0,
        trials_in_flight=0, generation=0, transitions=0, override=Override.AUTO,
    )  # fmt: skip
    call(breaker)
    call(breaker, duration_s=0.5)
    call(breaker, success=False)
    call(breaker, success=False)
    snap = breaker.snapshot()
    assert (snap.calls_in_window, snap.consecutive_failures) == (4, 2)
    assert (snap.failure_rate, snap.slow_call_rate) == (0.5, 0.25)
    clock.advance(1)
    call(breaker, success=False)  # opens at T0 + 1
    rejected(breaker, "open")
    clock.advance(30)
    trial = breaker.acquire()
    permit(breaker)
    breaker.record(trial, success=True, duration_s=FAST_S)
    snap = breaker.snapshot()
    assert snap.state == State.HALF_OPEN
    assert snap.since == T0 + 31 and snap.opened_at == T0 + 1
    assert snap.trials_in_flight == 1
    assert (snap.generation, snap.transitions) == (2, 2)
    as_dict = snap.to_dict()
    assert as_dict["state"] == "HALF_OPEN" and as_dict["trials_in_flight"] == 1 and as_dict["override"] == "AUTO"


@pytest.mark.parametrize("store_kind", ["memory", "file"])
def test_a_new_breaker_is_closed_since_its_first_call(store_kind, tmp_path):
    clock = FakeClock(1000.0)
    store = MemoryStore() if store_kind == "memory" else SharedFileStore(tmp_path)
    breaker = CircuitBreaker("m", GuardConfig(), store, clock=clock)
    clock.advance(5.0)
    breaker.acquire()
    clock.advance(2.0)
    breaker.acquire()
    assert breaker.snapshot().since == 1005.0


# --- requests, not calls ----------------------------------------------------------


def batch(breaker: CircuitBreaker, requests: int, *, success: bool = True, duration_s: float = FAST_S):
    """One permitted call that carried `requests` requests."""
    return breaker.record(permit(breaker), success=success, duration_s=duration_s, requests=requests)


def test_one_failed_call_of_threshold_requests_opens(make):
    breaker = make(failure_threshold=5, failure_rate_threshold=1.0)
    assert batch(breaker, 4, success=False) is None
    assert breaker.snapshot().consecutive_failures == 4
    assert batch(breaker, 1, success=False) == Transition(State.CLOSED, State.OPEN, T0, "consecutive_failures")


def test_a_failed_batch_of_five_opens_at_once(make):
    breaker = make(failure_threshold=5, failure_rate_threshold=1.0)
    assert batch(breaker, 5, success=False) == Transition(State.CLOSED, State.OPEN, T0, "consecutive_failures")


def test_a_good_batch_resets_the_run_and_fills_the_window_per_request(make):
    breaker = make(failure_threshold=5, window_size=20, minimum_calls=10, failure_rate_threshold=1.0)
    batch(breaker, 4, success=False)
    assert batch(breaker, 3) is None
    snap = breaker.snapshot()
    assert snap.consecutive_failures == 0
    assert snap.calls_in_window == 7
    assert snap.failure_rate == pytest.approx(4 / 7)


def test_failure_rate_counts_requests(make):
    # 1 call of 12 failed requests, 11 calls of 1 good one: by calls 1/12, by requests 12/23.
    breaker = make(failure_threshold=100, window_size=30, minimum_calls=20, failure_rate_threshold=0.5)
    for _ in range(11):
        assert batch(breaker, 1) is None
    assert batch(breaker, 12, success=False) == Transition(State.CLOSED, State.OPEN, T0, "failure_rate")


def test_slow_call_rate_counts_requests(make):
    breaker = make(failure_threshold=100, window_size=10, minimum_calls=10, slow_call_ms=100,
                   slow_call_rate_threshold=0.8)  # fmt: skip
    assert batch(breaker, 2) is None
    assert batch(breaker, 8, duration_s=0.2) == Transition(State.CLOSED, State.OPEN, T0, "slow_call_rate")


def test_more_requests_than_the_window_leave_it_full_of_them(make):
    breaker = make(failure_threshold=1000, window_size=10, minimum_calls=10, failure_rate_threshold=1.0)
    for _ in range(9):
        batch(breaker, 1, success=False)
    assert batch(breaker, 25) is None
    snap = breaker.snapshot()
    assert (snap.calls_in_window, snap.failure_rate) == (10, 0.0)


def test_zero_requests_add_nothing_in_closed(make):
    breaker = make(failure_threshold=5)
    batch(breaker, 3, success=False)
    assert batch(breaker, 0) is None
    snap = breaker.snapshot()
    assert (snap.consecutive_failures, snap.calls_in_window) == (3, 3)


def test_zero_requests_still_decide_a_trial(make, clock):
    breaker = make(failure_threshold=1)
    trip(breaker)
    trial = recover(breaker, clock)
    assert breaker.record(trial, success=True, duration_s=FAST_S, requests=0).to_state == State.CLOSED


def test_a_trial_is_one_permit_whatever_it_carried(make, clock):
    breaker = make(failure_threshold=1, half_open_max_calls=2)
    trip(breaker)
    first = recover(breaker, clock)
    assert breaker.record(first, success=True, duration_s=FAST_S, requests=30) is None
    assert breaker.snapshot().state == State.HALF_OPEN  # one of two trials, not 30
    assert batch(breaker, 30).to_state == State.CLOSED


def test_expired_requests_count_as_failures_while_closed(make):
    breaker = make(failure_threshold=5, failure_rate_threshold=1.0)
    assert breaker.record_expired(4) is None
    assert breaker.snapshot().consecutive_failures == 4
    assert breaker.record_expired(1) == Transition(State.CLOSED, State.OPEN, T0, "consecutive_failures")
    assert breaker.record_expired(0) is None


def test_expired_requests_change_nothing_when_open_or_half_open(make, clock):
    breaker = make(failure_threshold=1)
    trip(breaker)
    before = breaker.snapshot()
    assert breaker.record_expired(10) is None
    assert breaker.snapshot() == before
    trial = recover(breaker, clock)
    assert breaker.record_expired(10) is None
    assert breaker.snapshot().state == State.HALF_OPEN
    assert breaker.record(trial, success=True, duration_s=FAST_S).to_state == State.CLOSED


def test_consecutive_failures_stay_inside_the_shared_files_counters(make):
    breaker = make(failure_threshold=2**31 - 1)
    assert batch(breaker, 2**40, success=False).to_state == State.OPEN  # more than a u32 holds
    assert breaker.snapshot().consecutive_failures == 2**31 - 1


# --- probes (active recovery) ----------------------------------------------------------


def test_a_good_probe_ends_open_early_through_half_open(make, clock):
    breaker = make(failure_threshold=1, recovery_ms=30_000)
    trip(breaker)
    generation = breaker.snapshot().generation
    clock.advance(2.0)
    assert breaker.probe_succeeded(generation) == Transition(State.OPEN, State.HALF_OPEN, T0 + 2.0, "probe_succeeded")
    trial = breaker.acquire()  # HALF_OPEN's trial rule: one trial, the rest wait
    assert isinstance(trial, Permit) and trial.trial
    rejected(breaker, "half_open_full")
    assert breaker.record(trial, success=True, duration_s=FAST_S).to_state == State.CLOSED


def test_a_probe_of_an_older_generation_changes_nothing(make, clock):
    breaker = make(failure_threshold=1, recovery_ms=1_000)
    trip(breaker)
    old = breaker.snapshot().generation
    trial = recover(breaker, clock)
    breaker.record(trial, success=False, duration_s=FAST_S)  # re-opened: a new generation
    assert breaker.probe_succeeded(old) is None
    assert breaker.snapshot().state == State.OPEN


def test_a_probe_changes_nothing_unless_open(make):
    breaker = make()
    assert breaker.probe_succeeded(breaker.snapshot().generation) is None
    assert breaker.snapshot().state == State.CLOSED


def test_recovery_ms_stays_the_upper_bound_without_a_good_probe(make, clock):
    breaker = make(failure_threshold=1, recovery_ms=30_000)
    trip(breaker)
    clock.advance(29.999)
    rejected(breaker, "open")
    clock.advance(0.001)
    assert breaker.acquire().transition.reason == "recovery_elapsed"


# --- issue 20: a permit counts once -------------------------------------------------------


def test_a_trial_recorded_twice_counts_once(make, clock):
    # Two trials must succeed; one real call reported twice is still one.
    breaker = make(failure_threshold=1, half_open_max_calls=2)
    trip(breaker)
    trial = recover(breaker, clock)
    assert breaker.record(trial, success=True, duration_s=FAST_S) is None
    assert breaker.record(trial, success=True, duration_s=FAST_S) is None
    assert breaker.snapshot().state == State.HALF_OPEN
    second = permit(breaker)
    assert breaker.record(second, success=True, duration_s=FAST_S).to_state == State.CLOSED


def test_a_closed_permit_recorded_twice_counts_one_failure(make):
    breaker = make(failure_threshold=2, failure_rate_threshold=1.0)
    failed = permit(breaker)
    assert breaker.record(failed, success=False, duration_s=FAST_S) is None
    assert breaker.record(failed, success=False, duration_s=FAST_S) is None
    snap = breaker.snapshot()
    assert (snap.state, snap.consecutive_failures) == (State.CLOSED, 1)
