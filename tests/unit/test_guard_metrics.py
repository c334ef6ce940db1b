"""MetricsBuffer: the request path bumps counters; the publisher drains deltas."""

from __future__ import annotations

import sys
import threading

import pytest

from triton_guard.guard.breaker import State, Transition
from triton_guard.guard.failures import Failure
from triton_guard.guard.metrics import MetricsBuffer


def opened() -> Transition:
    return Transition(State.CLOSED, State.OPEN, 1.0, "consecutive_failures")


def half_opened() -> Transition:
    return Transition(State.OPEN, State.HALF_OPEN, 2.0, "recovery_elapsed")


def test_drain_returns_what_happened_since_the_last_drain():
    buf = MetricsBuffer()
    buf.rejected("open")
    buf.rejected("open")
    buf.rejected("overloaded")
    buf.completed(0.25, None)
    buf.completed(0.5, Failure.TIMEOUT)
    buf.completed(0.125, Failure.TIMEOUT)
    buf.completed(0.0625, Failure.CLIENT_ERROR)
    buf.transitioned(opened())
    buf.transitioned(half_opened())
    buf.transitioned(opened())

    delta = buf.drain()

    assert dict(delta.rejections) == {"open": 2, "overloaded": 1}
    # Keyed by the values the /metrics labels use (docs/reference/metrics.md: reason="timeout", to="OPEN").
    assert dict(delta.failures) == {"timeout": 2, "client_error": 1}
    assert dict(delta.transitions) == {"OPEN": 2, "HALF_OPEN": 1}
    assert delta.call_seconds == [0.25, 0.5, 0.125, 0.0625]  # every call, failed or not, in order


def test_drain_resets_the_deltas():
    buf = MetricsBuffer()
    buf.rejected("open")
    buf.completed(0.1, Failure.UPSTREAM_ERROR)
    buf.transitioned(opened())
    buf.drain()

    empty = buf.drain()
    assert not empty.rejections and not empty.failures and not empty.transitions
    assert empty.call_seconds == []

    buf.rejected("half_open_full")
    again = buf.drain()
    assert dict(again.rejections) == {"half_open_full": 1}  # counts from zero, not cumulative


def test_a_drained_delta_is_not_changed_by_later_events():
    buf = MetricsBuffer()
    buf.rejected("open")
    delta = buf.drain()
    buf.rejected("open")
    buf.completed(1.0, None)
    assert dict(delta.rejections) == {"open": 1}
    assert delta.call_seconds == []


@pytest.fixture
def frequent_thread_switches():
    """Let threads interleave inside a read-modify-write, as they may in a busy stub."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def test_concurrent_events_and_drains_add_up_exactly(frequent_thread_switches):
    threads_n, per_thread = 6, 2000
    buf = MetricsBuffer()
    start = threading.Barrier(threads_n + 1)
    drained = []
    writers_done = threading.Event()

    def writer(i: int) -> None:
        start.wait()
        for _ in range(per_thread):
            buf.rejected("open")
            buf.completed(float(i), Failure.TIMEOUT)
            buf.transitioned(opened())

    def drainer() -> None:
        # Drains race with the writers: no event may be lost or counted twice.
        start.wait()
        while not writers_done.is_set():
            drained.append(buf.drain())

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(threads_n)]
    drain_thread = threading.Thread(target=drainer)
    for t in [*threads, drain_thread]:
        t.start()
    for t in threads:
        t.join()
    writers_done.set()
    drain_thread.join()
    drained.append(buf.drain())

    total = threads_n * per_thread
    assert sum(d.rejections["open"] for d in drained) == total
    assert sum(d.failures["timeout"] for d in drained) == total
    assert sum(d.transitions["OPEN"] for d in drained) == total
    seconds = [s for d in drained for s in d.call_seconds]
    assert len(seconds) == total
    assert sorted(set(seconds)) == [float(i) for i in range(threads_n)]
    assert all(seconds.count(float(i)) == per_thread for i in range(threads_n))


def test_cumulative_bucket_counts_follow_prometheus_le_semantics():
    from triton_guard.guard.metrics import cumulative_bucket_counts

    # Upper bounds are inclusive; the last count is +Inf (every observation).
    assert cumulative_bucket_counts([0.5, 1.0, 2.0, 100.0], buckets=(1.0, 2.0, 5.0)) == [2, 3, 3, 4]
    assert cumulative_bucket_counts([], buckets=(1.0,)) == [0, 0]
