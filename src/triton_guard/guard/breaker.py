"""Circuit breaker state machine (resilience4j / pybreaker semantics).

The logic here never stores anything itself: every decision reads and writes
one `BreakerRecord` inside `with store.transaction(name) as rec:`, so the same
code runs on a per-process dict (MemoryStore) or on a file shared by every
guard process of a server (SharedFileStore). Time comes from an injected
clock (monotonic seconds): `time.monotonic` is CLOCK_MONOTONIC on Linux,
one clock for every process of the host, so timestamps in the shared record
mean the same thing in every process.

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

Counting: thresholds and windows count requests, not upstream calls. One
upstream call that carried N requests (a dynamic batch) records N outcomes;
a HALF_OPEN trial is one permit whatever it carried.

Generations: every transition bumps `generation`, and a permit remembers the
generation it was issued in. A record from an older generation (a call that
started before the last transition) is counted as stale and changes nothing.

Trial lease: a trial whose process died never reports. When a trial has been
outstanding for `timeout_ms + recovery_ms` (the upstream call's hard deadline
plus one recovery period of slack), the next acquire treats it as failed and
re-opens, so recovery stays automatic.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import ClassVar, Protocol

from triton_guard import defaults
from triton_guard.guard.config import GuardConfig

Clock = Callable[[], float]


class State(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


# Counters in the record are 32-bit in the shared file.
_COUNT_MAX = 2**31 - 1

# Outcome bits of one request in the window ring (one byte per request).
OUTCOME_FAILED = 1
OUTCOME_SLOW = 2


@dataclasses.dataclass(slots=True)
class BreakerRecord:
    """Everything one breaker remembers: plain numbers plus the window ring.

    Field order is the order of the shared file's struct layout.
    Times are clock seconds; 0.0 means "never".
    """

    generation: int = 0  # bumped by every transition
    transitions: int = 0  # total transitions so far
    permits: int = 0  # acquires answered with a Permit
    rejections: int = 0  # acquires answered with a Rejection
    records: int = 0  # outcomes that counted (current generation)
    stale_records: int = 0  # outcomes ignored: permit from an older generation
    since: float = 0.0  # when the current state was entered (0.0: never used yet)
    opened_at: float = 0.0  # when the breaker last opened
    last_trial_at: float = 0.0  # when the latest HALF_OPEN trial was issued
    state: int = int(State.CLOSED)
    consecutive_failures: int = 0
    window_size: int = 0  # ring slots in use; 0 until a breaker sizes it
    window_count: int = 0  # outcomes in the window (<= window_size)
    window_head: int = 0  # next ring slot to write
    window_failures: int = 0  # failed outcomes in the window
    window_slow: int = 0  # slow outcomes in the window
    trials_issued: int = 0  # HALF_OPEN trial permits handed out
    trials_succeeded: int = 0  # HALF_OPEN trials that reported success
    ring: bytearray = dataclasses.field(
        default_factory=lambda: bytearray(defaults.WINDOW_SIZE_MAX), repr=False
    )

    def copy(self) -> BreakerRecord:
        return BreakerRecord(
            self.generation, self.transitions, self.permits, self.rejections,
            self.records, self.stale_records, self.since, self.opened_at,
            self.last_trial_at, self.state, self.consecutive_failures,
            self.window_size, self.window_count, self.window_head,
            self.window_failures, self.window_slow, self.trials_issued,
            self.trials_succeeded, bytearray(self.ring),
        )  # fmt: skip

    def reset_window(self, size: int) -> None:
        self.window_size = size
        self.window_count = self.window_head = 0
        self.window_failures = self.window_slow = 0
        self.ring[:] = bytes(len(self.ring))

    def push_outcome(self, failed: bool, slow: bool) -> None:
        """Append one call to the count-based window, evicting the oldest."""
        head = self.window_head
        if self.window_count == self.window_size:
            evicted = self.ring[head]
            self.window_failures -= evicted & OUTCOME_FAILED
            self.window_slow -= (evicted & OUTCOME_SLOW) >> 1
        else:
            self.window_count += 1
        self.ring[head] = (OUTCOME_FAILED if failed else 0) | (OUTCOME_SLOW if slow else 0)
        self.window_failures += failed
        self.window_slow += slow
        self.window_head = (head + 1) % self.window_size


class BreakerStore(Protocol):
    """Where breaker records live. Transactions are atomic and exclusive."""

    def transaction(self, name: str) -> AbstractContextManager[BreakerRecord]: ...

    def read(self, name: str) -> BreakerRecord | None: ...

    def list_breakers(self) -> list[str]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    from_state: State
    to_state: State
    at: float  # clock seconds
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Permit:
    """Go ahead with the upstream call, then `record()` this permit."""

    allowed: ClassVar[bool] = True
    generation: int
    trial: bool  # a HALF_OPEN trial call
    transition: Transition | None = None  # caused by this acquire


@dataclasses.dataclass(frozen=True, slots=True)
class Rejection:
    """Do not call upstream. reason: "open" or "half_open_full"."""

    allowed: ClassVar[bool] = False
    reason: str
    retry_after_s: float  # until a trial will be admitted; 0.0 if unknown
    state: State
    transition: Transition | None = None  # caused by this acquire


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    name: str
    state: State
    since: float
    opened_at: float
    consecutive_failures: int
    calls_in_window: int
    failure_rate: float  # over the window; 0.0 when empty
    slow_call_rate: float
    trials_in_flight: int
    generation: int
    transitions: int
    permits: int
    rejections: int
    records: int
    stale_records: int

    @classmethod
    def from_record(cls, name: str, rec: BreakerRecord) -> BreakerSnapshot:
        count = rec.window_count
        state = State(rec.state)
        in_flight = rec.trials_issued - rec.trials_succeeded if state == State.HALF_OPEN else 0
        return cls(
            name=name,
            state=state,
            since=rec.since,
            opened_at=rec.opened_at,
            consecutive_failures=rec.consecutive_failures,
            calls_in_window=count,
            failure_rate=rec.window_failures / count if count else 0.0,
            slow_call_rate=rec.window_slow / count if count else 0.0,
            trials_in_flight=in_flight,
            generation=rec.generation,
            transitions=rec.transitions,
            permits=rec.permits,
            rejections=rec.rejections,
            records=rec.records,
            stale_records=rec.stale_records,
        )

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["state"] = self.state.name
        return d


_CLOSED = int(State.CLOSED)
_OPEN = int(State.OPEN)
_HALF_OPEN = int(State.HALF_OPEN)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        config: GuardConfig,
        store: BreakerStore,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self._store = store
        self._clock = clock
        # Seconds, precomputed: the request path runs for every batch.
        self._recovery_s = config.recovery_ms / 1000.0
        self._slow_s = config.slow_call_ms / 1000.0
        self.trial_lease_s = (config.timeout_ms + config.recovery_ms) / 1000.0

    # --- request path ------------------------------------------------------

    def acquire(self) -> Permit | Rejection:
        now = self._clock()
        with self._store.transaction(self.name) as rec:
            self._fit_window(rec)
            if rec.state == _CLOSED:
                if not rec.since:  # a new record: CLOSED since its first call
                    rec.since = now
                rec.permits += 1
                return Permit(rec.generation, False)
            if rec.state == _OPEN:
                return self._acquire_open(rec, now)
            return self._acquire_half_open(rec, now)

    def record(
        self, permit: Permit, *, success: bool, duration_s: float, requests: int = 1
    ) -> Transition | None:
        """The outcome of the call `permit` admitted, which carried `requests` requests.

        In CLOSED every request is one outcome. `requests=0` is an answer that
        stands for no request of its own (a batch about to be retried request
        by request): it still decides a HALF_OPEN trial, and adds nothing else.
        """
        now = self._clock()
        slow = duration_s > self._slow_s
        with self._store.transaction(self.name) as rec:
            if permit.generation != rec.generation:
                rec.stale_records += 1
                return None
            rec.records += 1
            if rec.state == _CLOSED:
                return self._record_closed(rec, now, not success, slow, requests)
            if rec.state == _HALF_OPEN:
                return self._record_trial(rec, now, success, slow)
            return None  # OPEN issues no permits, so a same-generation record cannot exist

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
            if rec.state != _CLOSED:
                return None
            if not rec.since:
                rec.since = now
            rec.records += 1
            return self._record_closed(rec, now, True, False, requests)

    def probe_succeeded(self, generation: int) -> Transition | None:
        """A recovery probe sent while OPEN in `generation` answered well: go HALF_OPEN now.

        The trial rule of HALF_OPEN then decides with real calls. Nothing
        happens when the breaker has moved on since the probe was sent.
        """
        now = self._clock()
        with self._store.transaction(self.name) as rec:
            if rec.state != _OPEN or rec.generation != generation:
                return None
            transition = self._move(rec, State.HALF_OPEN, now, "probe_succeeded")
            rec.trials_issued = rec.trials_succeeded = 0
            return transition

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
            rec.rejections += 1
            return Rejection("open", self._recovery_s - waited, State.OPEN)
        transition = self._move(rec, State.HALF_OPEN, now, "recovery_elapsed")
        rec.trials_issued = rec.trials_succeeded = 0
        return self._issue_trial(rec, now, transition)

    def _acquire_half_open(self, rec: BreakerRecord, now: float) -> Permit | Rejection:
        if now < rec.last_trial_at:
            rec.last_trial_at = now
        outstanding = rec.trials_issued > rec.trials_succeeded
        if outstanding and now - rec.last_trial_at >= self.trial_lease_s:
            # Every outstanding trial started at or before last_trial_at, so
            # all of them are past the lease: treat them as failed.
            transition = self._open(rec, now, "trial_lease_expired")
            rec.rejections += 1
            return Rejection("open", self._recovery_s, State.OPEN, transition)
        if rec.trials_issued < self.config.half_open_max_calls:
            return self._issue_trial(rec, now, None)
        rec.rejections += 1
        return Rejection("half_open_full", 0.0, State.HALF_OPEN)

    def _issue_trial(self, rec: BreakerRecord, now: float, transition: Transition | None) -> Permit:
        rec.trials_issued += 1
        rec.last_trial_at = now
        rec.permits += 1
        return Permit(rec.generation, True, transition)

    def _record_closed(
        self, rec: BreakerRecord, now: float, failed: bool, slow: bool, requests: int
    ) -> Transition | None:
        if requests <= 0:
            return None
        cfg = self.config
        self._fit_window(rec)
        # More outcomes than the window holds leave it full of this one.
        for _ in range(min(requests, rec.window_size)):
            rec.push_outcome(failed, slow)
        rec.consecutive_failures = min(rec.consecutive_failures + requests, _COUNT_MAX) if failed else 0
        if rec.consecutive_failures >= cfg.failure_threshold:
            return self._open(rec, now, "consecutive_failures")
        count = rec.window_count
        if count >= cfg.minimum_calls:
            if rec.window_failures / count >= cfg.failure_rate_threshold:
                return self._open(rec, now, "failure_rate")
            if rec.window_slow / count >= cfg.slow_call_rate_threshold:
                return self._open(rec, now, "slow_call_rate")
        return None

    def _record_trial(
        self, rec: BreakerRecord, now: float, success: bool, slow: bool
    ) -> Transition | None:
        if not success:
            return self._open(rec, now, "trial_failed")
        if slow:
            return self._open(rec, now, "trial_slow")
        rec.trials_succeeded += 1
        if rec.trials_succeeded < self.config.half_open_max_calls:
            return None
        transition = self._move(rec, State.CLOSED, now, "trials_succeeded")
        rec.reset_window(self.config.window_size)
        rec.consecutive_failures = 0
        rec.trials_issued = rec.trials_succeeded = 0
        return transition

    # --- transitions -------------------------------------------------------------

    def _open(self, rec: BreakerRecord, now: float, reason: str) -> Transition:
        transition = self._move(rec, State.OPEN, now, reason)
        rec.opened_at = now
        rec.trials_issued = rec.trials_succeeded = 0
        return transition

    @staticmethod
    def _move(rec: BreakerRecord, to: State, now: float, reason: str) -> Transition:
        transition = Transition(State(rec.state), to, now, reason)
        rec.state = int(to)
        rec.since = now
        rec.generation += 1
        rec.transitions += 1
        return transition

    def _fit_window(self, rec: BreakerRecord) -> None:
        # A fresh record (or one written under another window_size) gets a
        # window of this breaker's size; old outcomes cannot be re-bucketed.
        if rec.window_size != self.config.window_size:
            rec.reset_window(self.config.window_size)
