"""Guard metrics, buffered off the request path.

Every pb_utils metric update is a round trip from the stub to the server
process. The request path therefore only bumps in-process counters here; the
publisher thread of triton_guard.backends.bls drains them onto Triton's /metrics once a second.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from triton_guard.guard.breaker import Transition
from triton_guard.guard.failures import Failure
from triton_guard.guard.core import GuardEvents

# Metric names on Triton's /metrics (documented in README.md).
BREAKER_STATE = "triton_guard_breaker_state"
TRANSITIONS = "triton_guard_breaker_transitions_total"
REJECTIONS = "triton_guard_rejections_total"
FAILURES = "triton_guard_upstream_failures_total"
INFLIGHT = "triton_guard_inflight_calls"
# A Prometheus histogram written as its three counter series (_bucket{le},
# _sum, _count): pb_utils' own HISTOGRAM takes one stub-to-server round trip
# per observation, and replaying hundreds a second from the publisher thread
# stalled the guard's requests by up to 500 ms. PromQL's histogram_quantile
# reads these series exactly as it reads a native histogram.
CALL_SECONDS = "triton_guard_upstream_call_seconds"
CALL_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def cumulative_bucket_counts(seconds: list[float], buckets=CALL_SECONDS_BUCKETS) -> list[int]:
    """Observations <= each bucket's upper bound, then the +Inf bucket (all of them)."""
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
        self._lock = threading.Lock()
        self._delta = MetricsDelta()

    def rejected(self, reason: str, requests: int = 1) -> None:
        with self._lock:
            self._delta.rejections[reason] += requests

    def completed(self, duration_s: float | None, failure: Failure | None, requests: int = 1) -> None:
        with self._lock:
            if duration_s is not None:  # a bulkhead refusal made no upstream call to time
                self._delta.call_seconds.append(duration_s)
            if failure is not None and requests:
                self._delta.failures[failure.value] += requests

    def transitioned(self, transition: Transition) -> None:
        with self._lock:
            self._delta.transitions[transition.to_state.name] += 1

    def drain(self) -> MetricsDelta:
        with self._lock:
            delta, self._delta = self._delta, MetricsDelta()
        return delta
