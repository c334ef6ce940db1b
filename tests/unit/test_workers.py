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


@pytest.fixture
def pinned_workers(monkeypatch):
    from triton_guard import defaults

    monkeypatch.setenv(defaults.HANDOFF_PINNING_ENV, "1")
    pool = DeadlineWorkers(2, name="pinned")
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


def test_the_call_runs_with_the_workers_own_cpu_mask_and_the_caller_gets_its_mask_back(pinned_workers):
    import os

    workers = pinned_workers

    mask = os.sched_getaffinity(0)
    seen = workers.run(workers.take(), lambda: os.sched_getaffinity(0), 5.0)
    assert seen == mask  # threads the call starts (a torch pool) inherit the whole mask, not one CPU
    assert os.sched_getaffinity(0) == mask


def test_a_cpu_set_that_refuses_the_restore_never_fails_the_call_and_stops_the_pinning(pinned_workers, monkeypatch):
    import os

    workers = pinned_workers

    mask, real, calls = os.sched_getaffinity(0), os.sched_setaffinity, []

    def refuse_the_restore(pid, cpus):
        calls.append(set(cpus))
        if pid == 0 and set(cpus) == mask and len(mask) > 1:  # "a CPU of the old mask left the pod's set"
            raise OSError(22, "Invalid argument")
        return real(pid, cpus)

    monkeypatch.setattr(os, "sched_setaffinity", refuse_the_restore)
    try:
        assert workers.run(workers.take(), lambda: "answered", 5.0) == "answered"
        if not calls or len(mask) < 2:
            pytest.skip("this machine cannot pin threads: nothing to restore")
        tried = len(calls)
        assert workers.run(workers.take(), lambda: "again", 5.0) == "again"
        assert not workers._pin and len(calls) == tried  # given up: the next call pins nothing
    finally:
        real(0, mask)


def test_the_pinning_is_off_unless_its_variable_says_1(monkeypatch):
    from triton_guard import defaults

    monkeypatch.delenv(defaults.HANDOFF_PINNING_ENV, raising=False)
    pool = DeadlineWorkers(1, name="off")
    try:
        assert pool._pin is False
        assert pool.run(pool.take(), lambda: 1, 5.0) == 1
    finally:
        pool.close()
