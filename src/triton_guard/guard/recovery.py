"""Active recovery: while the breaker is OPEN, probe the upstream; a good answer ends OPEN early.

Without it, an OPEN breaker waits `recovery_ms` (30 s by default) even when
the upstream answers again a moment after it opened. `ActiveRecovery` sends
one probe (a small input that the upstream answered well before: the
placement keeps it in a `ProbeSample`) at most every `probe_interval_ms`,
outside client traffic: it uses neither the guard's workers nor its bulkhead,
and no client waits for it. A probe that answers without error, and no
slower than `slow_call_ms`, moves the breaker OPEN -> HALF_OPEN at once
(`CircuitBreaker.probe_succeeded`), where HALF_OPEN's trial rule decides with
real calls as usual. A failed probe changes nothing: the breaker's own
recovery timer keeps running, so `recovery_ms` stays the upper bound.

One probe in flight, server-wide: a probe holds `ProbeLock` until its
upstream call returns (not merely until its deadline: a call to a hung
upstream cannot be cancelled), and every guard process of the server shares
the lock (`FileProbeLock`, an flock the kernel drops when its holder dies).
So a still-hung upstream never has more than one probe in flight, however
many guard instances guard it.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from typing import Callable, Generic, Protocol, TypeVar

from triton_guard import defaults
from triton_guard.guard.breaker import CircuitBreaker
from triton_guard.guard.record import State, Transition

T = TypeVar("T")


class ProbeLock(Protocol):
    def acquire(self) -> bool:
        """Take the lock if free; never blocks."""

    def release(self) -> None: ...


class ThreadProbeLock:
    """One process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        return self._lock.acquire(blocking=False)

    def release(self) -> None:
        self._lock.release()


def try_flock(path: str) -> int | None:
    """An open fd holding an exclusive flock on `path` (created), or None when another holds it.

    Closing the fd drops the lock; so does the holder's death (the kernel closes it).
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class FileProbeLock:
    """Every process of the host that opens the same path: an exclusive, non-blocking flock.

    flock belongs to an open file, not to a process, so two holders in one
    process exclude each other too; the kernel releases it when the holder dies.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        self._fd = try_flock(self.path)
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # drops the flock


class ProbeOutcome:
    NOT_OPEN = "not_open"  # nothing to do
    NO_INPUT = "no_input"  # the placement has nothing to probe with yet
    BUSY = "busy"  # another probe is in flight
    FAILED = "failed"  # sent; an error, a timeout, or too slow
    SUCCEEDED = "succeeded"  # sent and answered well: OPEN ended (or had ended already)


class ActiveRecovery(Generic[T]):
    """Probes for one breaker. `probe_once` is the whole logic; a thread of the placement calls it every interval_s.

    `make_probe()` returns the call to make, `probe(timeout_s) -> answer`, or
    None when there is nothing to probe with yet. `error_of(answer)` returns
    the answer's error message, or None. `on_transition` sees HALF_OPEN
    entered by a probe.
    """

    def __init__(
        self,
        breaker: CircuitBreaker,
        make_probe: Callable[[], Callable[[float], T] | None],
        error_of: Callable[[T], str | None] = lambda _: None,
        lock: ProbeLock | None = None,
        on_transition: Callable[[Transition], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = breaker.config
        self.breaker = breaker
        self.interval_s = config.probe_interval_s
        self._timeout_s = config.timeout_s
        self._good_within_s = min(config.slow_call_ms, config.timeout_ms) / 1000.0
        self._make_probe = make_probe
        self._error_of = error_of
        self._lock = lock or ThreadProbeLock()
        self._on_transition = on_transition
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0

    def probe_once(self) -> str:
        """Send one probe if the breaker is OPEN and no probe is in flight; block until it returns."""
        snapshot = self.breaker.snapshot()
        if snapshot.state is not State.OPEN or snapshot.override:  # the common case (or an operator's): no probe
            return ProbeOutcome.NOT_OPEN
        probe = self._make_probe()
        if probe is None:
            return ProbeOutcome.NO_INPUT
        if not self._lock.acquire():
            return ProbeOutcome.BUSY
        try:
            # Read again under the lock: another process's probe may just have ended OPEN.
            snapshot = self.breaker.snapshot()
            if snapshot.state is not State.OPEN or snapshot.override:
                return ProbeOutcome.NOT_OPEN
            started = self._clock()
            try:
                good = self._error_of(probe(self._timeout_s)) is None
            except Exception:  # the call itself failed: no better than an error answer
                good = False
            if not good or self._clock() - started > self._good_within_s:
                return ProbeOutcome.FAILED
            transition = self.breaker.probe_succeeded(snapshot.generation)
        finally:
            self._lock.release()
        if transition is not None:
            self._on_transition(transition)
        return ProbeOutcome.SUCCEEDED


class ProbeSample(Generic[T]):
    """What the placement probes with: a copy of a recent good call's input, refreshed at most every refresh_s.

    `due(now)` is the request path's only cost after a good call (one
    comparison); the placement copies its input only when it is due (the
    request's tensors die with the request). Nothing is kept when recovery
    is off.
    """

    def __init__(self, enabled: bool, refresh_s: float = defaults.PROBE_SAMPLE_REFRESH_S) -> None:
        self.enabled = enabled
        self.refresh_s = refresh_s
        self.value: T | None = None
        self._next = -float("inf") if enabled else float("inf")

    def due(self, now: float) -> bool:
        return now >= self._next

    def keep(self, value: T, now: float) -> None:
        self.value, self._next = value, now + self.refresh_s
