"""Circuit breaker state machine (resilience4j / pybreaker semantics; docs/breaker.md).

The logic here never stores anything itself: it reads a record a store hands
out and changes it inside `with store.transaction(name) as rec:`, so the same
code runs on a per-process dict (MemoryStore) or on the file shared by every
guard process of a server (SharedFileStore). Time comes from an injected
clock (monotonic seconds): `time.monotonic` is CLOCK_MONOTONIC on Linux, one
clock for every process of the host, so timestamps in the shared record mean
the same thing in every process.

States:
  CLOSED     every call is permitted. Opens on `failure_threshold` failures in
             a row, or when the sliding window of the last `window_size` calls
             holds >= `minimum_calls` calls and its failure rate or slow-call
             rate reaches its threshold.
  OPEN       every call is rejected until `recovery_ms` have passed since it
             opened; the first acquire after that moves to HALF_OPEN. A
             successful recovery probe (guard/recovery.py) moves to HALF_OPEN
             earlier; a failed one changes nothing, so `recovery_ms` stays the
             upper bound.
  HALF_OPEN  exactly `half_open_max_calls` trial permits are issued. One
             failed or slow trial re-opens; all trials succeeding closes with a
             fresh window.
An operator's override (`force`) pins the breaker OPEN (every call refused)
or CLOSED (every call admitted, nothing counted) until `force(AUTO)`.

Counting: thresholds and windows count requests, not upstream calls. One
upstream call that carried N requests (a dynamic batch) records N outcomes;
a HALF_OPEN trial is one permit whatever it carried. A permit counts once:
a second `record` (or a `record` after `release`) changes nothing.

Generations: every transition bumps `generation`, and a permit remembers the
generation it was issued in. An outcome from an older generation (a call that
started before the last transition) is stale and changes nothing.

The request path: CLOSED acquires and OPEN rejections read the record through
`store.peek` (no lock; SharedFileStore: one pread). A good, fast call admitted
while nothing was pending (the window full of good, fast calls, no failure in a
row) changes nothing in the record, so its `record` writes nothing. Everything
else (failures, trials, transitions, the first calls of a fresh window) is one
transaction.

Trial lease: a trial whose process died never reports. When a trial has been
outstanding for `timeout_ms + recovery_ms` (the upstream call's hard deadline
plus one recovery period of slack), the next acquire treats it as failed and
re-opens, so recovery stays automatic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from triton_guard.guard.config import GuardConfig
from triton_guard.guard.record import (
    COUNT_MAX,
    N_GENERATION,
    N_OPENED_AT,
    N_OVERRIDE,
    N_SINCE,
    N_STATE,
    N_WINDOW_SIZE,
    BreakerRecord,
    BreakerSnapshot,
    Numbers,
    Override,
    Permit,
    Rejection,
    State,
    Transition,
    nothing_pending,
)

Clock = Callable[[], float]

_CLOSED, _OPEN, _HALF_OPEN = int(State.CLOSED), int(State.OPEN), int(State.HALF_OPEN)
_AUTO, _FORCED_OPEN, _FORCED_CLOSED = int(Override.AUTO), int(Override.FORCED_OPEN), int(Override.FORCED_CLOSED)


class BreakerStore(Protocol):
    """Where breaker records live. Transactions are atomic and exclusive."""

    def transaction(self, name: str) -> AbstractContextManager[BreakerRecord]: ...

    def peek(self, name: str, now: float) -> Numbers | tuple | None:
        """The record's numbers (in Numbers' order) without a lock, or None: then take a transaction.

        `now`: the caller's clock reading (a store may check its file once per interval).
        """

    def read(self, name: str) -> BreakerRecord | None: ...

    def list_breakers(self) -> list[str]: ...


class CircuitBreaker:
    def __init__(self, name: str, config: GuardConfig, store: BreakerStore, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.config = config
        self._store = store
        self._clock = clock
        # Seconds, precomputed: the request path runs for every batch.
        self._recovery_s = config.recovery_s
        self._slow_s = config.slow_call_s
        self._window_size = config.window_size
        self.trial_lease_s = (config.timeout_ms + config.recovery_ms) / 1000.0

    # --- request path ------------------------------------------------------

    def acquire(self, now: float | None = None) -> Permit | Rejection:
        """A permit for one upstream call, or why not. `now`: the caller's clock reading, if it has one."""
        if now is None:
            now = self._clock()
        n = self._store.peek(self.name, now)  # a Numbers tuple, read without a lock
        if n is not None and n[N_WINDOW_SIZE] == self._window_size:
            override = n[N_OVERRIDE]
            if override == _AUTO:
                state = n[N_STATE]
                if state == _CLOSED and n[N_SINCE]:
                    return Permit(n[N_GENERATION], False, None, nothing_pending(n))
                opened_at = n[N_OPENED_AT]
                if state == _OPEN and opened_at <= now < opened_at + self._recovery_s:
                    return Rejection("open", opened_at + self._recovery_s - now, State.OPEN)
            elif override == _FORCED_OPEN:
                return Rejection("forced_open", 0.0, State.OPEN)
            else:
                return Permit(n[N_GENERATION], False, None, False, True)
        with self._store.transaction(self.name) as rec:
            self._fit_window(rec)
            if rec.override != _AUTO:
                if rec.override == _FORCED_OPEN:
                    return Rejection("forced_open", 0.0, State.OPEN)
                return Permit(rec.generation, False, None, False, True)
            if rec.state == _CLOSED:
                if not rec.since:  # a new record: CLOSED since its first call
                    rec.since = now
                return Permit(rec.generation, False, None, nothing_pending(rec.numbers()))
            if rec.state == _OPEN:
                return self._acquire_open(rec, now)
            return self._acquire_half_open(rec, now)

    def record(self, permit: Permit, *, success: bool, duration_s: float, requests: int = 1) -> Transition | None:
        """The outcome of the call `permit` admitted, which carried `requests` requests.

        In CLOSED every request is one outcome. `requests=0` is an answer that
        stands for no request of its own (a batch about to be retried request
        by request): it still decides a HALF_OPEN trial, and adds nothing else.
        """
        if permit.spent:
            return None
        permit.spent = True
        if permit.disabled:
            return None
        slow = duration_s > self._slow_s
        if permit.clean and success and not slow:
            return None  # nothing pending: the record already says so (module docstring)
        now = self._clock()
        with self._store.transaction(self.name) as rec:
            if permit.generation != rec.generation or rec.override != _AUTO:
                return None  # stale: the breaker moved on since the call started
            if rec.state == _CLOSED:
                return self._record_closed(rec, now, not success, slow, requests)
            if rec.state == _HALF_OPEN:
                return self._record_trial(rec, now, success, slow)
            return None  # OPEN issues no permits, so a same-generation record cannot exist

    def release(self, permit: Permit) -> None:
        """Give an unused permit back: the call was never made (the guard's own bulkhead refused it).

        A trial goes back to HALF_OPEN's pool; nothing is counted either way
        (resilience4j's releasePermission).
        """
        if permit.spent:
            return
        permit.spent = True
        if not permit.trial:
            return
        with self._store.transaction(self.name) as rec:
            if rec.generation == permit.generation and rec.state == _HALF_OPEN and rec.trials_issued > 0:
                rec.trials_issued -= 1

    def record_expired(self, requests: int) -> Transition | None:
        """`requests` requests whose deadline passed before an upstream call could be made.

        Their callers saw a timeout, as if the upstream had not answered: in
        CLOSED they count as failures (no permit: the guard never called).
        OPEN already fails fast and HALF_OPEN is judged by its trials, so
        there they change nothing.
        """
        if requests <= 0:
            return None
        now = self._clock()
        with self._store.transaction(self.name) as rec:
            if rec.state != _CLOSED or rec.override != _AUTO:
                return None
            self._fit_window(rec)
            if not rec.since:
                rec.since = now
            return self._record_closed(rec, now, True, False, requests)

    def probe_succeeded(self, generation: int) -> Transition | None:
        """A recovery probe sent while OPEN in `generation` answered well: go HALF_OPEN now.

        The trial rule of HALF_OPEN then decides with real calls. Nothing
        happens when the breaker has moved on since the probe was sent, or an
        operator holds it open.
        """
        now = self._clock()
        with self._store.transaction(self.name) as rec:
            if rec.state != _OPEN or rec.generation != generation or rec.override != _AUTO:
                return None
            return self._half_open(rec, now, "probe_succeeded")

    def force(self, override: Override) -> Transition | None:
        """An operator's override; returns the transition it made, if any.

        FORCED_OPEN: OPEN now, every call refused until AUTO. FORCED_CLOSED:
        CLOSED with a fresh window, every call admitted and nothing counted
        until AUTO. AUTO from FORCED_OPEN goes HALF_OPEN (one trial decides,
        as after recovery_ms), from FORCED_CLOSED CLOSED with a fresh window.
        Calls in flight when the override changes are stale.
        """
        now = self._clock()
        with self._store.transaction(self.name) as rec:
            self._fit_window(rec)
            previous, rec.override = rec.override, int(override)
            if override is Override.FORCED_OPEN:
                return self._open(rec, now, "forced_open")
            if override is Override.FORCED_CLOSED:
                return self._close(rec, now, "forced_closed")
            if previous == _FORCED_OPEN:
                return self._half_open(rec, now, "override_cleared")
            if previous == _FORCED_CLOSED:
                return self._close(rec, now, "override_cleared")
            return None

    # --- reading -------------------------------------------------------------

    def snapshot(self) -> BreakerSnapshot:
        rec = self._store.read(self.name) or BreakerRecord()
        return BreakerSnapshot.from_record(self.name, rec)

    # --- per state -------------------------------------------------------------

    def _acquire_open(self, rec: BreakerRecord, now: float) -> Permit | Rejection:
        if now < rec.opened_at:  # clock of an earlier boot (persistent state dir)
            rec.opened_at = now
        waited = now - rec.opened_at
        if waited < self._recovery_s:
            return Rejection("open", self._recovery_s - waited, State.OPEN)
        transition = self._half_open(rec, now, "recovery_elapsed")
        return self._issue_trial(rec, now, transition)

    def _acquire_half_open(self, rec: BreakerRecord, now: float) -> Permit | Rejection:
        if now < rec.last_trial_at:
            rec.last_trial_at = now
        outstanding = rec.trials_issued > rec.trials_succeeded
        if outstanding and now - rec.last_trial_at >= self.trial_lease_s:
            # Every outstanding trial started at or before last_trial_at, so
            # all of them are past the lease: treat them as failed.
            transition = self._open(rec, now, "trial_lease_expired")
            return Rejection("open", self._recovery_s, State.OPEN, transition)
        if rec.trials_issued < self.config.half_open_max_calls:
            return self._issue_trial(rec, now, None)
        return Rejection("half_open_full", 0.0, State.HALF_OPEN)

    @staticmethod
    def _issue_trial(rec: BreakerRecord, now: float, transition: Transition | None) -> Permit:
        rec.trials_issued += 1
        rec.last_trial_at = now
        return Permit(rec.generation, True, transition)

    def _record_closed(self, rec: BreakerRecord, now: float, failed: bool, slow: bool, requests: int) -> Transition | None:
        if requests <= 0:
            return None
        cfg = self.config
        self._fit_window(rec)
        rec.push_outcomes(failed, slow, requests)
        rec.consecutive_failures = min(rec.consecutive_failures + requests, COUNT_MAX) if failed else 0
        if rec.consecutive_failures >= cfg.failure_threshold:
            return self._open(rec, now, "consecutive_failures")
        count = rec.window_count
        if count >= cfg.minimum_calls:
            if rec.window_failures / count >= cfg.failure_rate_threshold:
                return self._open(rec, now, "failure_rate")
            if rec.window_slow / count >= cfg.slow_call_rate_threshold:
                return self._open(rec, now, "slow_call_rate")
        return None

    def _record_trial(self, rec: BreakerRecord, now: float, success: bool, slow: bool) -> Transition | None:
        if not success:
            return self._open(rec, now, "trial_failed")
        if slow:
            return self._open(rec, now, "trial_slow")
        rec.trials_succeeded += 1
        if rec.trials_succeeded < self.config.half_open_max_calls:
            return None
        return self._close(rec, now, "trials_succeeded")

    # --- transitions -------------------------------------------------------------

    def _open(self, rec: BreakerRecord, now: float, reason: str) -> Transition:
        transition = self._move(rec, State.OPEN, now, reason)
        rec.opened_at = now
        return transition

    def _half_open(self, rec: BreakerRecord, now: float, reason: str) -> Transition:
        transition = self._move(rec, State.HALF_OPEN, now, reason)
        rec.last_trial_at = 0.0
        return transition

    def _close(self, rec: BreakerRecord, now: float, reason: str) -> Transition:
        transition = self._move(rec, State.CLOSED, now, reason)
        rec.reset_window(self._window_size)
        rec.consecutive_failures = 0
        return transition

    @staticmethod
    def _move(rec: BreakerRecord, to: State, now: float, reason: str) -> Transition:
        transition = Transition(State(rec.state), to, now, reason)
        rec.state = int(to)
        rec.since = now
        rec.generation += 1
        rec.transitions += 1
        rec.trials_issued = rec.trials_succeeded = 0
        return transition

    def _fit_window(self, rec: BreakerRecord) -> None:
        # A fresh record (or one written under another window_size) gets a
        # window of this breaker's size; old outcomes cannot be re-bucketed.
        if rec.window_size != self._window_size:
            rec.reset_window(self._window_size)
