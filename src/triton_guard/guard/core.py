"""The guard's runtime inside Triton: the policy driven by bulkhead workers that enforce the deadline.

`Guard.call` knows nothing about Triton: the backend hands it a function that
makes the upstream call (a BLS request, or the model's own execute) and a
function that reads an error message out of the answer. Every decision is
the policy's (guard/policy.py); this module makes the call on a bulkhead
worker (guard/workers.py) and stops waiting at the deadline. The same object
serves every placement in the server: the `guard` backend (its own ensemble
step), the in-process placement and a library call inside a user's model.

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

from typing import Callable, NamedTuple, Sequence, TypeVar

from triton_guard import defaults
from triton_guard.guard.failures import Failure
from triton_guard.guard.policy import Code, GuardPolicy, GuardResult
from triton_guard.guard.record import Permit, Rejection, State
from triton_guard.guard.workers import CallTimedOut, DeadlineWorkers

T = TypeVar("T")


def _no_error(answer: object) -> None:
    return None


class Part(NamedTuple):
    """The answer for some of an execute's requests (indices into them)."""

    requests: tuple[int, ...]
    result: GuardResult


class ExecuteQueue:
    """The earliest a request without an arrival stamp can have arrived (see the module docstring)."""

    def __init__(self, idle_gap_s: float = defaults.QUEUE_IDLE_GAP_S) -> None:
        self.idle_gap_s = idle_gap_s
        self._started: float | None = None  # when the previous execute began
        self._ended: float | None = None  # and ended
        self._timed_out = False  # whether it ended with a timeout

    def earliest_arrival(self, now: float) -> float:
        if self._timed_out and self._ended is not None and now - self._ended <= self.idle_gap_s:
            return self._started
        return now

    def started(self, now: float) -> None:
        self._started, self._ended, self._timed_out = now, None, False

    def timed_out(self) -> None:
        self._timed_out = True

    def ended(self, now: float) -> None:
        self._ended = now


class Guard:
    """`policy` driven by bulkhead workers that enforce the deadline (see the module docstring)."""

    def __init__(self, policy: GuardPolicy) -> None:
        self.policy = policy
        self.breaker = policy.breaker
        self._clock = policy.clock
        self._timeout_s = policy.timeout_s
        self._queue = ExecuteQueue()
        self.workers = DeadlineWorkers(policy.config.max_inflight, name=f"guard-{policy.upstream}")

    @property
    def inflight(self) -> int:
        """Upstream calls not yet answered, abandoned (timed-out) ones included."""
        return self.workers.inflight

    def call(
        self,
        upstream_call: Callable[[float], T],
        error_of: Callable[[T], str | None] = _no_error,
        *,
        requests: int = 1,
        deadline_s: float | None = None,
    ) -> GuardResult:
        """Run `upstream_call(timeout_s)` under the breaker, bulkhead and deadline: one call for `requests` requests.

        `error_of(answer)` returns the error message carried by an answer
        (BLS reports errors inside the response), or None. `deadline_s`
        (clock seconds) is when the callers must have their answer; without
        it, timeout_ms from now. The call gets whichever comes first.
        """
        return self._call(upstream_call, error_of, requests, deadline_s, self._clock(), split=False)

    def call_requests(
        self,
        arrivals: Sequence[float | None],
        upstream_call: Callable[[Sequence[int], float], T],
        error_of: Callable[[T], str | None] = _no_error,
        *,
        batch: bool = True,
    ) -> list[Part]:
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
        queue = self._queue
        earliest = queue.earliest_arrival(now)
        queue.started(now)
        timeout_s = self._timeout_s
        # When each request arrived (an unstamped one: as early as it can have); deadlines are timeout_s later.
        arrived = [earliest if a is None else a for a in arrivals] if None in arrivals else arrivals
        parts: list[Part] = []
        try:
            first = min(arrived, default=now) + timeout_s
            if first > now:  # nothing expired: the common case
                live = range(len(arrived))
            else:
                expired = [i for i, a in enumerate(arrived) if a + timeout_s <= now]
                parts = self._answer_expired(expired, now, arrivals, earliest)
                live = [i for i, a in enumerate(arrived) if a + timeout_s > now]
                first = min((arrived[i] for i in live), default=now) + timeout_s
            if batch and len(live) > 1:
                together = tuple(live)
                result = self._call(lambda t: upstream_call(together, t), error_of, len(together), first, now, split=True)
                if result is not None:
                    parts.append(Part(together, result))
                    if result.failure is Failure.TIMEOUT:
                        queue.timed_out()
                    return parts
                now = self._clock()
            for i in live:  # alone: one request, or a batch split after a client's mistake
                deadline = arrived[i] + timeout_s
                result = self._call(lambda t, i=i: upstream_call((i,), t), error_of, 1, deadline, now, split=False)
                parts.append(Part((i,), result))
                if result.failure is Failure.TIMEOUT:
                    queue.timed_out()
                now = self._clock()
            return parts
        finally:
            queue.ended(self._clock())

    def _call(
        self,
        upstream_call: Callable[[float], T],
        error_of: Callable[[T], str | None],
        requests: int,
        deadline_s: float | None,
        now: float,
        split: bool,
    ) -> GuardResult | None:
        """None only with `split`, for a client's mistake: the caller retries request by request."""
        policy = self.policy
        permit = policy.admit(requests, deadline_s, now)
        if type(permit) is not Permit:
            return permit  # refused: the deadline had passed, or the breaker said no
        worker = self.workers.take()
        if worker is None:
            return policy.overloaded(permit, requests, self.workers.inflight)
        timeout_s = policy.time_left(deadline_s, now)
        message = None
        answer = None
        try:
            answer = self.workers.run(worker, lambda: upstream_call(timeout_s), timeout_s)
            message = error_of(answer)
            failure = policy.classify(message) if message else None
        except CallTimedOut:
            failure = Failure.TIMEOUT
        except Exception as exc:  # the call itself raised: same meaning as an error answer
            message = str(exc) or type(exc).__name__
            failure = policy.classify(message)
        return policy.finished(permit, requests, self._clock() - now, failure, message, answer, split=split)

    def _answer_expired(
        self, expired: list[int], now: float, arrivals: Sequence[float | None], earliest: float
    ) -> list[Part]:
        self._queue.timed_out()
        policy = self.policy
        snapshot = self.breaker.snapshot()  # one read, only on this rare path
        if snapshot.state is State.OPEN:
            # The breaker already fails everything fast: say so, as to every other caller.
            recovery_s = policy.config.recovery_s
            retry_after = recovery_s if now < snapshot.opened_at else max(recovery_s - (now - snapshot.opened_at), 0.0)
            reason = "forced_open" if snapshot.override else "open"
            policy.events.rejected(reason, len(expired))
            rejection = Rejection(reason, retry_after, State.OPEN)
            result = GuardResult(Code.UNAVAILABLE, message=policy.rejection_message(rejection), rejected=reason)
            return [Part((i,), result) for i in expired]
        policy.expired(len(expired))
        return [Part((i,), self._expired_before(now, arrivals[i], earliest)) for i in expired]

    def _expired_before(self, now: float, arrival: float | None, earliest: float) -> GuardResult:
        if arrival is None:
            waited = f"up to {(now - earliest) * 1000:.0f} ms of waiting in the guard's queue"
        else:
            waited = f"{(now - arrival) * 1000:.0f} ms of waiting before the guard"
        return GuardResult(
            Code.UNAVAILABLE,
            message=f"{self.policy.label}: deadline timeout_ms={self.policy.config.timeout_ms} passed after {waited}",
            failure=Failure.TIMEOUT,
            rejected="deadline",
        )

    def close(self) -> None:
        # Do not wait: abandoned calls to a hung upstream may never return.
        self.workers.close()
