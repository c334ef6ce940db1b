"""Active recovery: probes while OPEN, one in flight, a good one ends OPEN early.

A real CircuitBreaker on a MemoryStore with a fake clock; probes are plain
functions. Where a probe must be "in flight", it blocks on a threading.Event
that the test sets.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from tests import fakes

from triton_guard.guard.breaker import CircuitBreaker, Permit, State, Transition
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.recovery import ActiveRecovery, FileProbeLock, ProbeOutcome, ThreadProbeLock
from triton_guard.guard.store import MemoryStore

T0 = 1000.0


@pytest.fixture
def clock():
    return fakes.FakeClock(T0)


@pytest.fixture
def breaker(clock):
    config = GuardConfig(failure_threshold=1, recovery_ms=30_000, timeout_ms=2_000, slow_call_ms=1_000)
    return CircuitBreaker("upstream", config, MemoryStore(), clock=clock)


def open_breaker(breaker: CircuitBreaker) -> None:
    permit = breaker.acquire()
    breaker.record(permit, success=False, duration_s=0.0)
    assert breaker.snapshot().state is State.OPEN


class Probes:
    """Counts probe calls; answers what the test says."""

    def __init__(self, answer="ANSWER", clock=None, takes_s=0.0):
        self.calls: list[float] = []
        self.answer = answer
        self.clock = clock
        self.takes_s = takes_s

    def __call__(self, timeout_s: float):
        self.calls.append(timeout_s)
        if self.clock is not None:
            self.clock.advance(self.takes_s)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def error_answer(answer):
    return answer if isinstance(answer, str) and answer.startswith("error") else None


def recovery(breaker, probe, clock, lock=None, seen=None):
    return ActiveRecovery(
        breaker,
        lambda: probe,
        error_answer,
        lock or ThreadProbeLock(),
        on_transition=(seen.append if seen is not None else lambda _: None),
        clock=clock,
    )


def test_nothing_is_sent_unless_open(breaker, clock):
    probe = Probes()
    assert recovery(breaker, probe, clock).probe_once() == ProbeOutcome.NOT_OPEN
    assert probe.calls == []


def test_nothing_to_probe_with_yet(breaker, clock):
    open_breaker(breaker)
    rec = ActiveRecovery(breaker, lambda: None, error_answer, clock=clock)
    assert rec.probe_once() == ProbeOutcome.NO_INPUT
    assert breaker.snapshot().state is State.OPEN


def test_a_good_probe_ends_open_through_half_open_trial_rule(breaker, clock):
    open_breaker(breaker)
    clock.advance(3.0)
    probe, seen = Probes(), []
    assert recovery(breaker, probe, clock, seen=seen).probe_once() == ProbeOutcome.SUCCEEDED
    assert probe.calls == [2.0]  # the probe's deadline is timeout_ms
    assert seen == [Transition(State.OPEN, State.HALF_OPEN, T0 + 3.0, "probe_succeeded")]
    # HALF_OPEN's rule decides with a real call: one trial, then CLOSED.
    trial = breaker.acquire()
    assert isinstance(trial, Permit) and trial.trial
    assert breaker.record(trial, success=True, duration_s=0.0).to_state is State.CLOSED


@pytest.mark.parametrize(
    "probe_kwargs",
    [
        {"answer": "error: still broken"},
        {"answer": RuntimeError("socket closed")},
        {"answer": "ANSWER", "takes_s": 1.001},  # slower than slow_call_ms: not recovered
    ],
    ids=["error", "raises", "slow"],
)
def test_a_failed_probe_changes_nothing_and_recovery_ms_still_bounds_open(breaker, clock, probe_kwargs):
    open_breaker(breaker)
    before = breaker.snapshot()
    probe = Probes(clock=clock, **probe_kwargs)
    assert recovery(breaker, probe, clock).probe_once() == ProbeOutcome.FAILED
    after = breaker.snapshot()
    assert (after.state, after.opened_at, after.generation) == (State.OPEN, before.opened_at, before.generation)
    clock.now = T0 + 30.0  # the breaker's own timer, untouched by the probe
    assert breaker.acquire().transition.reason == "recovery_elapsed"


def test_a_probe_answered_after_the_breaker_moved_on_changes_nothing(breaker, clock):
    open_breaker(breaker)

    def probe(timeout_s):
        clock.advance(0.5)  # meanwhile recovery elapsed, and a client's trial re-opened it
        trial = breaker.acquire()
        breaker.record(trial, success=False, duration_s=0.0)
        return "ANSWER"

    generation = breaker.snapshot().generation
    clock.now = T0 + 29.5
    rec = ActiveRecovery(breaker, lambda: probe, error_answer, clock=clock)
    assert rec.probe_once() == ProbeOutcome.SUCCEEDED
    snap = breaker.snapshot()
    assert snap.state is State.OPEN and snap.generation == generation + 2


def _hung_probe_in_thread(rec: ActiveRecovery):
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(rec.probe_once()))
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("lock_kind", ["thread", "file"])
def test_a_hung_probe_is_the_only_one_in_flight(breaker, clock, tmp_path, lock_kind):
    """Two guard processes' recoveries on one breaker: the second sends nothing while the first hangs."""
    open_breaker(breaker)
    if lock_kind == "thread":
        shared = ThreadProbeLock()
        locks = (shared, shared)
    else:  # two FileProbeLocks on one path: what two processes hold
        path = str(tmp_path / "state" / "probe-upstream.lock")
        locks = (FileProbeLock(path), FileProbeLock(path))
    release, started = threading.Event(), threading.Event()

    def hung(timeout_s):
        started.set()
        assert release.wait(10)
        return "ANSWER"

    first = ActiveRecovery(breaker, lambda: hung, error_answer, locks[0], clock=clock)
    other_probe = Probes()
    second = ActiveRecovery(breaker, lambda: other_probe, error_answer, locks[1], clock=clock)
    thread, outcome = _hung_probe_in_thread(first)
    assert started.wait(10)
    for _ in range(20):  # however often its timer fires
        assert second.probe_once() == ProbeOutcome.BUSY
    assert other_probe.calls == []
    release.set()
    thread.join(10)
    assert outcome == [ProbeOutcome.SUCCEEDED]
    assert breaker.snapshot().state is State.HALF_OPEN
    assert second.probe_once() == ProbeOutcome.NOT_OPEN  # nothing left to probe for
    assert other_probe.calls == []


def test_probes_are_off_with_interval_zero(clock):
    config = GuardConfig(probe_interval_ms=0)
    rec = ActiveRecovery(CircuitBreaker("u", config, MemoryStore(), clock=clock), lambda: None, clock=clock)
    assert not rec.enabled


def test_file_probe_lock_excludes_within_a_process_and_frees_on_release(tmp_path):
    path = str(tmp_path / "probe.lock")
    a, b = FileProbeLock(path), FileProbeLock(path)
    assert a.acquire()
    assert not b.acquire()
    a.release()
    assert b.acquire()
    b.release()


def test_file_probe_lock_of_a_dead_holder_is_free(tmp_path):
    path = str(tmp_path / "probe.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"""
import fcntl, os, sys, time
fd = os.open({path!r}, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""],  # fmt: skip
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = FileProbeLock(path)
        assert not lock.acquire()  # another process holds it
    finally:
        holder.kill()
        holder.wait(10)
    assert lock.acquire()  # the kernel dropped the dead holder's lock
    lock.release()
