"""The guard's request path: breaker, bulkhead and hard deadline around one call.

`Guard.call` knows nothing about Triton: the backend hands it a function that
makes the upstream call (a BLS request) and a function that reads an error
message out of the answer. That keeps the logic here testable in-process,
and the same object serves both placements: the `guard` backend (its own
ensemble step) and a library call inside a user's own Python model.

Why a worker pool and not asyncio: a non-decoupled Python instance runs one
execute at a time anyway, so the only concurrency needed is "give up waiting
at the deadline". A timed-out call keeps its worker until the upstream
answers; the bulkhead counts such abandoned calls as in flight, so there is
always a free worker for the next call and a hung upstream can never starve
the guard (the asyncio default executor has only min(32, cpus + 4) threads).

Requests, not calls: `call_requests` takes one execute's requests (their
arrival times, when a step before the guard stamped them) and owns what a
placement must not get wrong: every request's deadline (timeout_ms after it
arrived), answering at once the ones whose deadline passed before the guard,
one upstream call for the rest, and, when a batch fails with a client's
mistake, retrying its requests one by one, each within its own original
deadline. A call that carried N requests records N outcomes.

A request without an arrival stamp: a non-decoupled instance runs one execute
at a time, and an idle instance takes queued requests at once. So when the
previous execute of this instance ended with a timeout (a hung upstream) and
this one began right after it, its requests may have waited since that
previous execute began, and their deadline counts from there
(`ExecuteQueue`): a client calling a guard directly gets its answer by
timeout_ms even while the guard's instances are blocked on a hung upstream,
instead of a fresh timeout after waiting one. The bound can only be early,
never late (it assumes the dynamic batcher took every queued request into
the previous batch, as it does unless that batch was full). After an
execute that got its answers, the deadline starts with the execute, as
before: a slow but healthy upstream never shortens the next caller's budget.
"""

from __future__ import annotations

import enum
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

from triton_guard import defaults
from triton_guard.guard.breaker import CircuitBreaker, Permit, Rejection, State, Transition
from triton_guard.guard.failures import Failure, FailureClassifier
from triton_guard.guard.config import GuardConfig

T = TypeVar("T")

UNAVAILABLE_PREFIX = "Service temporarily unavailable"


class Code(enum.Enum):
    """What the client is told; the backend maps these to TritonError codes."""

    OK = "ok"
    UNAVAILABLE = "unavailable"  # HTTP 503 / gRPC UNAVAILABLE
    INVALID_ARG = "invalid_arg"  # HTTP 400 / gRPC INVALID_ARGUMENT
    INTERNAL = "internal"  # HTTP 500 / gRPC INTERNAL


_FAILURE_CODES = {
    Failure.CLIENT_ERROR: Code.INVALID_ARG,
    Failure.TIMEOUT: Code.UNAVAILABLE,
    Failure.OVERLOADED: Code.UNAVAILABLE,
    Failure.STUB_DEAD: Code.UNAVAILABLE,
    Failure.UPSTREAM_ERROR: Code.INTERNAL,
}


@dataclass(frozen=True)
class GuardResult(Generic[T]):
    code: Code
    value: T | None = None  # the upstream's answer when code is OK
    message: str = ""  # for the client when code is not OK
    failure: Failure | None = None
    rejected: str | None = None  # why it was refused without an upstream call

    @property
    def ok(self) -> bool:
        return self.code is Code.OK


@dataclass(frozen=True)
class Part(Generic[T]):
    """The answer for some of an execute's requests (indices into them)."""

    requests: tuple[int, ...]
    result: GuardResult[T]


class GuardEvents:
    """Hooks for metrics; the default does nothing. Called on the request path: keep cheap.

    `requests` is how many requests the event stands for.
    """

    def rejected(self, reason: str, requests: int = 1) -> None: ...

    def completed(self, duration_s: float | None, failure: Failure | None, requests: int = 1) -> None:
        """duration_s is None when no upstream call was made (bulkhead full, deadline passed)."""

    def transitioned(self, transition: Transition) -> None: ...


class ExecuteQueue:
    """The earliest a request without an arrival stamp can have arrived (see the module docstring)."""

    def __init__(self, idle_gap_s: float = defaults.QUEUE_IDLE_GAP_S) -> None:
        self.idle_gap_s = idle_gap_s
        self._started: float | None = None  # when the previous execute began
        self._ended: float | None = None  # and ended
        self._timed_out = False  # whether it ended with a timeout

    def earliest_arrival(self, now: float) -> float:
        busy_until_now = self._ended is not None and now - self._ended <= self.idle_gap_s
        return self._started if busy_until_now and self._timed_out else now

    def started(self, now: float) -> None:
        self._started, self._ended, self._timed_out = now, None, False

    def timed_out(self) -> None:
        self._timed_out = True

    def ended(self, now: float) -> None:
        self._ended = now


class Guard:
    def __init__(
        self,
        upstream: str,
        config: GuardConfig,
        breaker: CircuitBreaker,
        classifier: FailureClassifier | None = None,
        events: GuardEvents | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.config = config
        self.breaker = breaker
        self.classifier = classifier or FailureClassifier()
        self.events = events or GuardEvents()
        self._clock = clock
        self._timeout_s = config.timeout_ms / 1000.0
        self._queue = ExecuteQueue()
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        # max_inflight workers: the bulkhead guarantees a free one for every admitted call.
        self._workers = ThreadPoolExecutor(
            max_workers=config.max_inflight, thread_name_prefix=f"guard-{upstream}"
        )

    @property
    def inflight(self) -> int:
        """Upstream calls not yet answered, abandoned (timed-out) ones included."""
        return self._inflight

    def call(
        self,
        upstream_call: Callable[[float], T],
        error_of: Callable[[T], str | None] = lambda _: None,
        *,
        requests: int = 1,
        deadline_s: float | None = None,
    ) -> GuardResult[T]:
        """Run `upstream_call(timeout_s)` under the breaker, bulkhead and deadline: one call for `requests` requests.

        `error_of(answer)` returns the error message carried by an answer
        (BLS reports errors inside the response), or None. `deadline_s`
        (clock seconds) is when the callers must have their answer; without
        it, timeout_ms from now. The call gets whichever comes first.
        """
        return self._call(upstream_call, error_of, requests, deadline_s, split=False)

    def call_requests(
        self,
        arrivals: Sequence[float | None],
        upstream_call: Callable[[Sequence[int], float], T],
        error_of: Callable[[T], str | None] = lambda _: None,
        *,
        batch: bool = True,
    ) -> list[Part[T]]:
        """One execute's requests: answers for all of them, in parts.

        `arrivals[i]`: clock seconds at which request i entered the pipeline,
        or None when nothing stamped it. `upstream_call(indices, timeout_s)`
        makes one upstream call carrying those requests. With `batch` the
        live requests go in one call (retried one by one if it fails with a
        client's mistake); without, one call each. Call once per execute of
        a non-decoupled instance: the queue bound for unstamped requests
        relies on it.
        """
        now = self._clock()
        earliest = self._queue.earliest_arrival(now)
        self._queue.started(now)
        try:
            timeout_s = self._timeout_s
            deadlines = [(earliest if a is None else a) + timeout_s for a in arrivals]
            expired = [i for i, deadline in enumerate(deadlines) if deadline <= now]
            parts = self._answer_expired(expired, now, arrivals, earliest)
            live = [i for i, deadline in enumerate(deadlines) if deadline > now]
            if len(live) > 1 and batch:
                together, deadline = tuple(live), min(deadlines[i] for i in live)
                result = self._call(lambda t: upstream_call(together, t), error_of, len(live), deadline, split=True)
                if result is not None:
                    parts.append(Part(tuple(live), result))
                    live = []
            for i in live:  # alone: one request, or a batch split after a client's mistake
                result = self._call(lambda t, i=i: upstream_call([i], t), error_of, 1, deadlines[i], split=False)
                parts.append(Part((i,), result))
            if any(part.result.failure is Failure.TIMEOUT for part in parts):
                self._queue.timed_out()
            return parts
        finally:
            self._queue.ended(self._clock())

    def _call(
        self,
        upstream_call: Callable[[float], T],
        error_of: Callable[[T], str | None],
        requests: int,
        deadline_s: float | None,
        split: bool,
    ) -> GuardResult[T] | None:
        """None only with `split`, for a client's mistake: the caller retries request by request."""
        if deadline_s is not None and deadline_s <= self._clock():
            self._record_expired(requests)  # no time left for an upstream call: do not make one
            return self._timeout_result()
        decision = self.breaker.acquire()
        if decision.transition is not None:  # OPEN -> HALF_OPEN, or an expired trial lease
            self.events.transitioned(decision.transition)
        if isinstance(decision, Rejection):
            self.events.rejected(decision.reason, requests)
            return GuardResult(Code.UNAVAILABLE, message=self._rejection_message(decision), rejected=decision.reason)

        with self._inflight_lock:
            admitted = self._inflight < self.config.max_inflight
            if admitted:
                self._inflight += 1
        if not admitted:
            self._record(decision, Failure.OVERLOADED, None, requests)
            self.events.rejected("overloaded", requests)
            return GuardResult(
                Code.UNAVAILABLE,
                message=f"model '{self.upstream}' overloaded: {self.config.max_inflight} calls in flight "
                f"(max_inflight={self.config.max_inflight})",
                failure=Failure.OVERLOADED,
                rejected="overloaded",
            )

        started = self._clock()
        timeout_s = self._timeout_s if deadline_s is None else max(min(deadline_s - started, self._timeout_s), 0.0)
        future = self._workers.submit(self._run, upstream_call, timeout_s)
        answer, message = None, None
        try:
            answer = future.result(timeout=timeout_s)
            message = error_of(answer)
            failure = self.classifier.classify(message) if message else None
        except FutureTimeout:
            failure = Failure.TIMEOUT
        except Exception as exc:  # the call itself raised: same meaning as an error answer
            message = str(exc) or type(exc).__name__
            failure = self.classifier.classify(message)
        if split and failure is Failure.CLIENT_ERROR:
            # The upstream answered (a trial is decided); each request is counted on its retry.
            self._record(decision, failure, self._clock() - started, 0)
            return None
        self._record(decision, failure, self._clock() - started, requests)

        if failure is None:
            return GuardResult(Code.OK, value=answer)
        if failure is Failure.TIMEOUT:
            # Also an upstream queue that expired the request (its timeout is our deadline).
            return self._timeout_result(message)
        if failure is not Failure.CLIENT_ERROR:
            message = f"upstream model '{self.upstream}' failed: {message}"
        return GuardResult(_FAILURE_CODES[failure], message=message, failure=failure)

    def _timeout_result(self, detail: str | None = None) -> GuardResult:
        message = f"model '{self.upstream}' did not answer within timeout_ms={self.config.timeout_ms}"
        return GuardResult(
            Code.UNAVAILABLE, message=f"{message} ({detail})" if detail else message, failure=Failure.TIMEOUT
        )

    def _expired_before(self, now: float, arrival: float | None, earliest: float) -> GuardResult:
        if arrival is None:
            waited = f"up to {(now - earliest) * 1000:.0f} ms of waiting in the guard's queue"
        else:
            waited = f"{(now - arrival) * 1000:.0f} ms of waiting before the guard"
        return GuardResult(
            Code.UNAVAILABLE,
            message=f"model '{self.upstream}': deadline timeout_ms={self.config.timeout_ms} passed after {waited}",
            failure=Failure.TIMEOUT,
            rejected="deadline",
        )

    def _answer_expired(
        self, expired: list[int], now: float, arrivals: Sequence[float | None], earliest: float
    ) -> list[Part]:
        if not expired:
            return []
        self._queue.timed_out()
        snapshot = self.breaker.snapshot()  # one read, only on this rare path
        if snapshot.state is State.OPEN:
            # The breaker already fails everything fast: say so, as to every other caller.
            if now < snapshot.opened_at:
                retry_after = self.breaker.config.recovery_ms / 1000.0
            else:
                retry_after = max(self.breaker.config.recovery_ms / 1000.0 - (now - snapshot.opened_at), 0.0)
            self.events.rejected("open", len(expired))
            rejection = Rejection("open", retry_after, State.OPEN)
            result = GuardResult(Code.UNAVAILABLE, message=self._rejection_message(rejection), rejected="open")
            return [Part((i,), result) for i in expired]
        self._record_expired(len(expired))
        return [Part((i,), self._expired_before(now, arrivals[i], earliest)) for i in expired]

    def _record_expired(self, requests: int) -> None:
        # Their callers saw a timeout: it counts against the upstream (while CLOSED).
        if not requests:
            return
        self.events.rejected("deadline", requests)
        self.events.completed(None, Failure.TIMEOUT, requests)
        transition = self.breaker.record_expired(requests)
        if transition is not None:
            self.events.transitioned(transition)

    def _record(self, permit: Permit, failure: Failure | None, duration_s: float | None, requests: int) -> None:
        # A client's mistake means the upstream answered, and answered right.
        success = failure is None or not failure.counts_against_upstream
        transition = self.breaker.record(permit, success=success, duration_s=duration_s or 0.0, requests=requests)
        self.events.completed(duration_s, failure, requests)
        if transition is not None:
            self.events.transitioned(transition)

    def _run(self, upstream_call: Callable[[float], T], timeout_s: float) -> T:
        # The slot is given back in the worker, before the future hands the
        # answer to the caller: a done-callback would run only after the
        # caller was woken, so a caller calling again at once could find its
        # own finished call still counted and be refused as overloaded.
        try:
            return upstream_call(timeout_s)
        finally:
            with self._inflight_lock:
                self._inflight -= 1

    def _rejection_message(self, rejection: Rejection) -> str:
        if rejection.state is State.OPEN:
            return (
                f"{UNAVAILABLE_PREFIX}: circuit breaker for model '{self.upstream}' is OPEN; "
                f"next trial call in {rejection.retry_after_s:.1f} s"
            )
        return (
            f"{UNAVAILABLE_PREFIX}: circuit breaker for model '{self.upstream}' is HALF_OPEN "
            f"with {self.config.half_open_max_calls} trial call(s) in flight; retry shortly"
        )

    def close(self) -> None:
        # Do not wait: abandoned calls to a hung upstream may never return.
        self._workers.shutdown(wait=False, cancel_futures=True)
