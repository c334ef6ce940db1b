"""guard/workers.py: the bulkhead's workers and the cheap hand-off, with real threads (no sleeps)."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import wait_until
from triton_guard.guard.workers import CallTimedOut, DeadlineWorkers


@pytest.fixture
def workers():
    pool = DeadlineWorkers(2, name="test")
    yield pool
    pool.close()


def test_a_call_returns_its_value_or_raises_its_exception_on_the_callers_thread(workers):
    assert workers.run(workers.take(), lambda: threading.current_thread().name, 5.0).startswith("test-")
    with pytest.raises(KeyError, match="missing"):
        workers.run(workers.take(), lambda: {}["missing"], 5.0)
    assert workers.inflight == 0


def test_a_hung_call_is_given_up_at_its_timeout_and_keeps_its_worker_until_it_returns(workers):
    release = threading.Event()
    with pytest.raises(CallTimedOut):
        workers.run(workers.take(), lambda: release.wait(30), 0.05)
    assert workers.inflight == 1
    assert workers.run(workers.take(), lambda: "the other worker", 5.0) == "the other worker"
    assert workers.take() is not None  # one free again (the second worker)
    release.set()
    wait_until(lambda: workers.inflight == 1, 5, "the hung call's worker back")  # the taken one is still out


def test_the_bulkhead_is_full_when_every_worker_is_out(workers):
    release = threading.Event()
    for _ in range(2):
        with pytest.raises(CallTimedOut):
            workers.run(workers.take(), lambda: release.wait(30), 0.01)
    assert workers.take() is None and workers.inflight == 2
    release.set()
    wait_until(lambda: workers.inflight == 0, 5, "both workers back")


def test_a_finished_calls_worker_is_free_before_its_caller_wakes(workers):
    for i in range(500):
        assert workers.run(workers.take(), lambda i=i: i, 5.0) == i
        assert workers.inflight == 0  # never 1 here: it went back first


def test_threads_are_started_lazily_and_never_more_than_the_size():
    pool = DeadlineWorkers(3, name="lazy")
    assert pool.inflight == 0 and threading.active_count() >= 1
    names_before = {t.name for t in threading.enumerate()}
    pool.run(pool.take(), lambda: None, 5.0)
    started = {t.name for t in threading.enumerate()} - names_before
    assert started == {"lazy-1"}
    pool.close()
    assert pool.take() is None  # closed: no new worker
