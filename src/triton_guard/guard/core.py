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
"""

from __future__ import annotations

import enum
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

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
    Failure.NON_FINITE: Code.INTERNAL,  # the upstream answered garbage
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


class GuardEvents:
    """Hooks for metrics; the default does nothing. Called on the request path: keep cheap."""

    def rejected(self, reason: str) -> None: ...

    def completed(self, duration_s: float | None, failure: Failure | None) -> None:
        """duration_s is None when no upstream call was made (bulkhead full)."""

    def transitioned(self, transition: Transition) -> None: ...


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
        budget_s: float | None = None,
    ) -> GuardResult[T]:
        """Run `upstream_call(timeout_s)` under the breaker, bulkhead and deadline.

        `error_of(answer)` returns the error message carried by an answer
        (BLS reports errors inside the response), or None. `budget_s`, when
        given, is what is left of the callers' deadline (they waited before
        the guard): the call gets the smaller of it and timeout_ms.
        """
        decision = self.breaker.acquire()
        if decision.transition is not None:  # OPEN -> HALF_OPEN, or an expired trial lease
            self.events.transitioned(decision.transition)
        if isinstance(decision, Rejection):
            self.events.rejected(decision.reason)
            return GuardResult(Code.UNAVAILABLE, message=self._rejection_message(decision), rejected=decision.reason)

        with self._inflight_lock:
            admitted = self._inflight < self.config.max_inflight
            if admitted:
                self._inflight += 1
        if not admitted:
            self._record(decision, Failure.OVERLOADED, None)
            self.events.rejected("overloaded")
            return GuardResult(
                Code.UNAVAILABLE,
                message=f"model '{self.upstream}' overloaded: {self.config.max_inflight} calls in flight "
                f"(max_inflight={self.config.max_inflight})",
                failure=Failure.OVERLOADED,
                rejected="overloaded",
            )

        timeout_s = self._timeout_s if budget_s is None else max(min(budget_s, self._timeout_s), 0.0)
        started = self._clock()
        future = self._workers.submit(self._run, upstream_call, timeout_s)
        answer, message = None, None
        try:
            answer = future.result(timeout=timeout_s)
            message = error_of(answer)
            failure = self.classifier.classify(message) if message else None
        except FutureTimeout:
            failure = Failure.TIMEOUT
            message = f"model '{self.upstream}' did not answer within timeout_ms={self.config.timeout_ms}"
        except Exception as exc:  # the call itself raised: same meaning as an error answer
            message = str(exc) or type(exc).__name__
            failure = self.classifier.classify(message)
        self._record(decision, failure, self._clock() - started)

        if failure is None:
            return GuardResult(Code.OK, value=answer)
        if failure is not Failure.TIMEOUT and failure is not Failure.CLIENT_ERROR:
            message = f"upstream model '{self.upstream}' failed: {message}"
        return GuardResult(_FAILURE_CODES[failure], message=message, failure=failure)

    def _record(self, permit: Permit, failure: Failure | None, duration_s: float | None) -> None:
        # A client's mistake means the upstream answered, and answered right.
        success = failure is None or not failure.counts_against_upstream
        transition = self.breaker.record(permit, success=success, duration_s=duration_s or 0.0)
        self.events.completed(duration_s, failure)
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
