"""What one breaker remembers, and the words its state machine answers in.

`BreakerRecord` is the whole record a store keeps (plain numbers plus the
window ring); `Numbers` is the same record without the ring, what a store can
hand out without a lock on the request path (`BreakerStore.peek`). The
decisions the breaker answers with are `Permit`, `Rejection` and `Transition`;
`BreakerSnapshot` is a record as the canary, `status` and tests read it.
Plain Python: no I/O here (triton_guard.guard.breaker decides, the stores keep).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import ClassVar, NamedTuple

from triton_guard import defaults


class State(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class Override(enum.IntEnum):
    """An operator's override (`triton-guard breaker MODEL open|close|auto`)."""

    AUTO = 0  # the state machine decides
    FORCED_OPEN = 1  # every call refused until `auto` (resilience4j FORCED_OPEN)
    FORCED_CLOSED = 2  # every call admitted, no outcome counted, until `auto` (resilience4j DISABLED)


# Outcome bits of one request in the window ring (one byte per request).
OUTCOME_FAILED = 1
OUTCOME_SLOW = 2

# Counters in the shared file are 32-bit.
COUNT_MAX = 2**31 - 1


class Numbers(NamedTuple):
    """A record's numbers without the ring, in the shared file's layout order."""

    generation: int
    transitions: int
    since: float
    opened_at: float
    last_trial_at: float
    state: int
    override: int
    consecutive_failures: int
    window_size: int
    window_count: int
    window_head: int
    window_failures: int
    window_slow: int
    trials_issued: int
    trials_succeeded: int


# Positions in a Numbers tuple: the request path indexes the plain tuple a store's peek returns.
(
    N_GENERATION, N_TRANSITIONS, N_SINCE, N_OPENED_AT, N_LAST_TRIAL_AT, N_STATE, N_OVERRIDE,
    N_CONSECUTIVE_FAILURES, N_WINDOW_SIZE, N_WINDOW_COUNT, N_WINDOW_HEAD, N_WINDOW_FAILURES, N_WINDOW_SLOW,
    N_TRIALS_ISSUED, N_TRIALS_SUCCEEDED,
) = range(len(Numbers._fields))  # fmt: skip


@dataclasses.dataclass(slots=True)
class BreakerRecord:
    """Everything one breaker remembers: `Numbers`' fields, in their order, plus the window ring.

    Times are clock seconds; 0.0 means "never".
    """

    generation: int = 0  # bumped by every transition: permits of older generations are stale
    transitions: int = 0  # total transitions so far
    since: float = 0.0  # when the current state was entered (0.0: never used yet)
    opened_at: float = 0.0  # when the breaker last opened
    last_trial_at: float = 0.0  # when the latest HALF_OPEN trial was issued
    state: int = int(State.CLOSED)
    override: int = int(Override.AUTO)
    consecutive_failures: int = 0
    window_size: int = 0  # ring slots in use; 0 until a breaker sizes it
    window_count: int = 0  # outcomes in the window (<= window_size)
    window_head: int = 0  # next ring slot to write
    window_failures: int = 0  # failed outcomes in the window
    window_slow: int = 0  # slow outcomes in the window
    trials_issued: int = 0  # HALF_OPEN trial permits handed out
    trials_succeeded: int = 0  # HALF_OPEN trials that reported success
    ring: bytearray = dataclasses.field(default_factory=lambda: bytearray(defaults.WINDOW_SIZE_MAX), repr=False)

    def numbers(self) -> Numbers:
        return Numbers(*(getattr(self, name) for name in Numbers._fields))

    @classmethod
    def of(cls, numbers: Numbers | tuple, ring: bytes | bytearray) -> BreakerRecord:
        return cls(*numbers, bytearray(ring))

    def copy(self) -> BreakerRecord:
        return BreakerRecord.of(self.numbers(), self.ring)

    def reset_window(self, size: int) -> None:
        self.window_size = size
        self.window_count = self.window_head = 0
        self.window_failures = self.window_slow = 0
        self.ring[:] = bytes(len(self.ring))

    def push_outcomes(self, failed: bool, slow: bool, count: int) -> None:
        """Append `count` equal outcomes to the count-based window, evicting the oldest.

        More outcomes than the window holds leave it full of this one.
        """
        size = self.window_size
        count = min(count, size)
        value = (OUTCOME_FAILED if failed else 0) | (OUTCOME_SLOW if slow else 0)
        ring, head = self.ring, self.window_head
        for _ in range(count):
            if self.window_count == size:
                evicted = ring[head]
                self.window_failures -= evicted & OUTCOME_FAILED
                self.window_slow -= (evicted & OUTCOME_SLOW) >> 1
            else:
                self.window_count += 1
            ring[head] = value
            head = (head + 1) % size
        self.window_head = head
        self.window_failures += failed * count
        self.window_slow += slow * count


def nothing_pending(numbers: tuple) -> bool:
    """A record (its Numbers) whose window is full of good, fast calls, with no failure in a row.

    In CLOSED one more good, fast call then changes nothing in it: the
    request path need not write it (see CircuitBreaker.record).
    """
    return (
        numbers[N_WINDOW_COUNT] == numbers[N_WINDOW_SIZE]
        and not numbers[N_CONSECUTIVE_FAILURES]
        and not numbers[N_WINDOW_FAILURES]
        and not numbers[N_WINDOW_SLOW]
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    from_state: State
    to_state: State
    at: float  # clock seconds
    reason: str


class Permit:
    """Go ahead with the upstream call, then `record()` (or `release()`) this permit, once.

    trial: a HALF_OPEN trial call. clean: admitted while nothing was pending
    (a good, fast answer needs no write). disabled: admitted by an operator's
    FORCED_CLOSED (its outcome is not counted).
    """

    __slots__ = ("generation", "trial", "transition", "clean", "disabled", "spent")
    allowed: ClassVar[bool] = True

    def __init__(
        self,
        generation: int,
        trial: bool,
        transition: Transition | None = None,
        clean: bool = False,
        disabled: bool = False,
    ) -> None:
        self.generation = generation
        self.trial = trial
        self.transition = transition  # caused by this acquire
        self.clean = clean
        self.disabled = disabled
        self.spent = False  # recorded or released: a second report changes nothing

    def __repr__(self) -> str:
        return f"Permit(generation={self.generation}, trial={self.trial}, transition={self.transition})"


class Rejection(NamedTuple):
    """Do not call upstream. reason: "open", "half_open_full" or "forced_open"."""

    reason: str
    retry_after_s: float  # until a trial will be admitted; 0.0 if unknown
    state: State
    transition: Transition | None = None  # caused by this acquire
    allowed: bool = False


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
    override: Override = Override.AUTO

    @classmethod
    def from_record(cls, name: str, rec: BreakerRecord | Numbers) -> BreakerSnapshot:
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
            override=Override(rec.override),
        )

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["state"] = self.state.name
        d["override"] = self.override.name
        return d
