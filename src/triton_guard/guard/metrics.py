"""Guard metrics, buffered off the request path.

Every pb_utils metric update is a round trip from the stub to the server
process. The request path therefore only bumps in-process counters here; the
guard's publisher thread (triton_guard.backends.runtime) drains them onto
Triton's /metrics once a second. A good call (the common case) is one append
to a deque, no lock: the drain takes exactly what was there when it began.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Sequence

from triton_guard.guard.failures import Failure
from triton_guard.guard.policy import GuardEvents
from triton_guard.guard.record import Transition


def cumulative_bucket_counts(seconds: list[float], buckets: Sequence[float]) -> list[int]:
    """Observations <= each bucket's upper bound, then the +Inf bucket (all of them).

    A histogram is published as its three counter series (_bucket{le}, _sum,
    _count: backends/metrics.py): pb_utils' own HISTOGRAM takes one
    stub-to-server round trip per observation, and replaying hundreds a
    second from the publisher thread stalled the guard's requests by up to 500 ms.
    """
    counts = [0] * (len(buckets) + 1)
    for value in seconds:
        for i, bound in enumerate(buckets):
            if value <= bound:
                counts[i] += 1
    counts[-1] = len(seconds)
    return counts


@dataclass
class MetricsDelta:
    rejections: Counter = field(default_factory=Counter)  # reason -> requests
    failures: Counter = field(default_factory=Counter)  # Failure.value -> requests
    transitions: Counter = field(default_factory=Counter)  # to-state name -> count
    call_seconds: list = field(default_factory=list)


class MetricsBuffer(GuardEvents):
    def __init__(self) -> None:
        self._lock = threading.Lock()  # for the rare events: rejections, failures, transitions
        self._delta = MetricsDelta()
        self._seconds: deque[float] = deque()  # call durations: appends need no lock

    def rejected(self, reason: str, requests: int = 1) -> None:
        with self._lock:
            self._delta.rejections[reason] += requests

    def completed(self, duration_s: float | None, failure: Failure | None, requests: int = 1) -> None:
        if duration_s is not None:  # an expired request made no upstream call to time
            self._seconds.append(duration_s)
        if failure is not None and requests:
            with self._lock:
                self._delta.failures[failure.value] += requests

    def transitioned(self, transition: Transition) -> None:
        with self._lock:
            self._delta.transitions[transition.to_state.name] += 1

    def drain(self) -> MetricsDelta:
        with self._lock:
            delta, self._delta = self._delta, MetricsDelta()
        seconds, popleft = self._seconds, self._seconds.popleft
        delta.call_seconds = [popleft() for _ in range(len(seconds))]  # appends meanwhile stay for the next drain
        return delta
