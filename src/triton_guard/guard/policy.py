"""The guard's policy: everything a guarded call decides, once, with no threads, files or Triton.

One `GuardPolicy` per guarded upstream. A runtime drives it through one call:

    decision = policy.admit(requests, deadline_s, now)   # GuardResult: refused, answer it
    if it has no free slot:  result = policy.overloaded(decision, requests, inflight)
    ... makes the call within policy.time_left(deadline_s, now) seconds ...
    result = policy.finished(decision, requests, duration_s, failure, message, value)

The runtimes: triton_guard.guard.core.Guard (every placement inside Triton:
bulkhead workers enforce the deadline) and triton_guard.client.guard.GuardedClient
(asyncio: `wait_for` enforces it). They make the call and read the clock; the
policy decides: the deadline (a request whose deadline passed is answered
without a call), the breaker (admit or reject), the bulkhead's refusal (the
permit goes back unused: the guard refusing itself says nothing about the
upstream), the outcome's classification (a client's mistake never counts),
what is recorded, and the answer or the message the caller gets. Messages
name `label` ("model 'classifier'", or with the server's URL on the client).
Time is clock seconds throughout (the breaker's clock: CLOCK_MONOTONIC).
"""

from __future__ import annotations

import enum
import time
from typing import Any, Callable, Generic, NamedTuple, TypeVar

from triton_guard.guard.breaker import CircuitBreaker
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.failures import Failure, FailureClassifier
from triton_guard.guard.record import Permit, Rejection, State, Transition

T = TypeVar("T")

UNAVAILABLE_PREFIX = "Service temporarily unavailable"


class Code(enum.Enum):
    """What the client is told; the runtimes map these to their error codes."""

    OK = "ok"
    UNAVAILABLE = "unavailable"  # HTTP 503 / gRPC UNAVAILABLE
    INVALID_ARG = "invalid_arg"  # HTTP 400 / gRPC INVALID_ARGUMENT
    INTERNAL = "internal"  # HTTP 500 / gRPC INTERNAL


FAILURE_CODES = {
    Failure.CLIENT_ERROR: Code.INVALID_ARG,
    Failure.TIMEOUT: Code.UNAVAILABLE,
    Failure.OVERLOADED: Code.UNAVAILABLE,
    Failure.STUB_DEAD: Code.UNAVAILABLE,
    Failure.NON_FINITE: Code.INTERNAL,  # the upstream answered garbage
    Failure.UPSTREAM_ERROR: Code.INTERNAL,
}


class GuardResult(NamedTuple, Generic[T]):
    code: Code
    value: Any = None  # the upstream's answer when code is OK
    message: str = ""  # for the client when code is not OK
    failure: Failure | None = None
    rejected: str | None = None  # why it was refused without an upstream call

    @property
    def ok(self) -> bool:
        return self.code is Code.OK


class GuardEvents:
    """Hooks for metrics; the default does nothing. Called on the request path: keep cheap.

    `requests` is how many requests the event stands for.
    """

    def rejected(self, reason: str, requests: int = 1) -> None: ...

    def completed(self, duration_s: float | None, failure: Failure | None, requests: int = 1) -> None:
        """duration_s is None when no upstream call was made (the deadline had passed)."""

    def transitioned(self, transition: Transition) -> None: ...


class GuardPolicy:
    def __init__(
        self,
        upstream: str,
        config: GuardConfig,
        breaker: CircuitBreaker,
        classifier: FailureClassifier | None = None,
        events: GuardEvents | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        label: str | None = None,
    ) -> None:
        self.upstream = upstream
        self.config = config
        self.breaker = breaker
        self.classifier = classifier or FailureClassifier()
        self.events = events or GuardEvents()
        self.clock = clock
        self.label = label or f"model '{upstream}'"
        self.timeout_s = config.timeout_s

    # --- before the call -------------------------------------------------------------

    def admit(self, requests: int = 1, deadline_s: float | None = None, now: float | None = None) -> Permit | GuardResult:
        """A permit for one call carrying `requests` requests, or the answer that refuses it."""
        if now is None:
            now = self.clock()
        if deadline_s is not None and deadline_s <= now:
            self.expired(requests)  # no time left for an upstream call: do not make one
            return self.timeout_result()
        decision = self.breaker.acquire(now)
        if decision.transition is not None:  # OPEN -> HALF_OPEN, or an expired trial lease
            self.events.transitioned(decision.transition)
        if decision.allowed:
            return decision
        self.events.rejected(decision.reason, requests)
        return GuardResult(Code.UNAVAILABLE, message=self.rejection_message(decision), rejected=decision.reason)

    def overloaded(self, permit: Permit, requests: int, inflight: int) -> GuardResult:
        """The bulkhead had no free slot: the permit goes back unused, nothing counts against the upstream."""
        self.breaker.release(permit)
        self.events.rejected("overloaded", requests)
        return GuardResult(
            Code.UNAVAILABLE,
            message=f"{self.label} overloaded: {inflight} calls in flight (max_inflight={self.config.max_inflight})",
            failure=Failure.OVERLOADED,
            rejected="overloaded",
        )

    def abandoned(self, permit: Permit) -> None:
        """The caller gave up before an answer (a cancelled client call): nothing learnt, the permit goes back."""
        self.breaker.release(permit)

    def time_left(self, deadline_s: float | None, now: float) -> float:
        """Seconds the call may take: timeout_ms, or less when the callers' deadline comes first."""
        if deadline_s is None:
            return self.timeout_s
        return max(min(deadline_s - now, self.timeout_s), 0.0)

    # --- after the call -------------------------------------------------------------------

    def classify(self, message: str) -> Failure:
        return self.classifier.classify(message)

    def finished(
        self,
        permit: Permit,
        requests: int,
        duration_s: float,
        failure: Failure | None = None,
        message: str | None = None,
        value: Any = None,
        *,
        split: bool = False,
    ) -> GuardResult | None:
        """Record the call's outcome; the answer for its callers.

        `failure` None: it answered `value`. Failure.TIMEOUT: no answer by the
        deadline (`message`: the upstream's own words, when it expired the
        request itself). With `split`, a client's mistake returns None: the
        caller retries the requests one by one, each counted on its retry.
        """
        # A client's mistake means the upstream answered, and answered right.
        success = failure is None or failure is Failure.CLIENT_ERROR
        if split and failure is Failure.CLIENT_ERROR:
            self._record(permit, success, duration_s, failure, 0)  # the upstream answered: a trial is decided
            return None
        self._record(permit, success, duration_s, failure, requests)
        if failure is None:
            return GuardResult(Code.OK, value)
        if failure is Failure.TIMEOUT:
            return self.timeout_result(message)
        if failure is not Failure.CLIENT_ERROR:
            message = f"upstream {self.label} failed: {message}"
        return GuardResult(FAILURE_CODES[failure], message=message, failure=failure)

    def expired(self, requests: int) -> None:
        """`requests` requests whose deadline passed before a call: their callers see a timeout."""
        if not requests:
            return
        self.events.rejected("deadline", requests)
        self.events.completed(None, Failure.TIMEOUT, requests)
        transition = self.breaker.record_expired(requests)
        if transition is not None:
            self.events.transitioned(transition)

    def _record(self, permit: Permit, success: bool, duration_s: float, failure: Failure | None, requests: int) -> None:
        transition = self.breaker.record(permit, success=success, duration_s=duration_s, requests=requests)
        self.events.completed(duration_s, failure, requests)
        if transition is not None:
            self.events.transitioned(transition)

    # --- messages -------------------------------------------------------------------------

    def timeout_result(self, detail: str | None = None) -> GuardResult:
        message = f"{self.label} did not answer within timeout_ms={self.config.timeout_ms}"
        return GuardResult(
            Code.UNAVAILABLE, message=f"{message} ({detail})" if detail else message, failure=Failure.TIMEOUT
        )

    def rejection_message(self, rejection: Rejection) -> str:
        if rejection.reason == "forced_open":
            return f"{UNAVAILABLE_PREFIX}: circuit breaker for {self.label} was opened by an operator"
        if rejection.state is State.OPEN:
            return (
                f"{UNAVAILABLE_PREFIX}: circuit breaker for {self.label} is OPEN; "
                f"next trial call in {rejection.retry_after_s:.1f} s"
            )
        return (
            f"{UNAVAILABLE_PREFIX}: circuit breaker for {self.label} is HALF_OPEN "
            f"with {self.config.half_open_max_calls} trial call(s) in flight; retry shortly"
        )
