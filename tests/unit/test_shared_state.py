"""Stores: cross-process consistency, readers, corruption, a killed lock holder.

Worker functions live at module level so spawned processes can import them.
"""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import signal
import struct
import threading
import time

import pytest

from triton_guard import defaults
from triton_guard.guard.breaker import OUTCOME_FAILED, CircuitBreaker, Permit, Rejection, State
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.shared_state import (
    FILE_SIZE,
    LAYOUT_VERSION,
    MAGIC,
    MemoryStore,
    SharedFileStore,
    breaker_filename,
    default_state_dir,
)

NAME = "ensemble/upstream"  # a name that needs sanitising
# Never trips: the hammer test checks bookkeeping, not transitions.
NEVER_TRIPS = dict(failure_threshold=1_000_000, failure_rate_threshold=1.0)
SPAWN = multiprocessing.get_context("spawn")
JOIN_S = 10  # generous upper bound; the tests take well under a second each


def _hammer(directory: str, pairs: int, start: multiprocessing.synchronize.Barrier) -> None:
    breaker = CircuitBreaker(NAME, GuardConfig(**NEVER_TRIPS), SharedFileStore(directory))
    start.wait()  # both processes create the file at the same moment
    for i in range(pairs):
        permit = breaker.acquire()
        assert isinstance(permit, Permit)
        breaker.record(permit, success=i % 4 != 0, duration_s=0.001)


def _trip(directory: str) -> None:
    breaker = CircuitBreaker(NAME, GuardConfig(failure_threshold=3), SharedFileStore(directory))
    for _ in range(3):
        breaker.record(breaker.acquire(), success=False, duration_s=0.001)


def _hold_lock_forever(directory: str, holding: multiprocessing.synchronize.Event) -> None:
    with SharedFileStore(directory).transaction(NAME) as rec:
        rec.permits = 999_999  # never written back: the process dies first
        holding.set()
        time.sleep(60)


def _run(target, *args) -> None:
    process = SPAWN.Process(target=target, args=args)
    process.start()
    process.join(JOIN_S)
    assert process.exitcode == 0


def _window_failures_in_ring(rec) -> int:
    return sum(rec.ring[i] & OUTCOME_FAILED for i in range(rec.window_count))


# --- across processes --------------------------------------------------------------


def test_two_processes_hammering_one_breaker_stay_consistent(tmp_path):
    pairs = 1500
    start = SPAWN.Barrier(2)
    workers = [SPAWN.Process(target=_hammer, args=(str(tmp_path), pairs, start)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(JOIN_S)
        assert worker.exitcode == 0
    rec = SharedFileStore(tmp_path).read(NAME)
    assert rec is not None
    assert rec.permits == rec.records == 2 * pairs  # no update lost
    assert (rec.stale_records, rec.generation, rec.state) == (0, 0, State.CLOSED)
    assert rec.window_count == GuardConfig().window_size
    assert rec.window_failures == _window_failures_in_ring(rec)


def test_threads_and_stores_in_one_process_share_one_handle(tmp_path):
    # POSIX locks are per process: two handles for one file would not exclude
    # each other, so every store must hand out the same one.
    first, second = SharedFileStore(tmp_path), SharedFileStore(tmp_path)
    assert first.transaction(NAME) is second.transaction(NAME)
    config = GuardConfig(**NEVER_TRIPS)

    def work(store: SharedFileStore) -> None:
        breaker = CircuitBreaker(NAME, config, store)
        for _ in range(500):
            breaker.record(breaker.acquire(), success=True, duration_s=0.001)

    threads = [threading.Thread(target=work, args=(s,)) for s in (first, second, first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rec = first.read(NAME)
    assert rec.permits == rec.records == 2000


def test_reader_sees_state_written_by_another_process(tmp_path):
    _run(_trip, str(tmp_path))
    reader = SharedFileStore(tmp_path)
    assert reader.list_breakers() == [NAME]
    rec = reader.read(NAME)
    assert rec is not None and rec.state == State.OPEN and rec.consecutive_failures == 3
    snap = CircuitBreaker(NAME, GuardConfig(), reader).snapshot()
    assert snap.state == State.OPEN and snap.transitions == 1
    # The same clock (CLOCK_MONOTONIC) in every process: this one rejects too.
    got = CircuitBreaker(NAME, GuardConfig(), reader).acquire()
    assert isinstance(got, Rejection) and got.reason == "open"
    assert 0 < got.retry_after_s <= defaults.RECOVERY_MS / 1000


def test_process_killed_holding_the_lock_does_not_wedge_others(tmp_path):
    holding = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_lock_forever, args=(str(tmp_path), holding))
    holder.start()
    try:
        assert holding.wait(JOIN_S)
        path = SharedFileStore(tmp_path).path_for(NAME)
        assert _lock_is_held(path)  # the test really is about a held lock
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(JOIN_S)
    done = threading.Event()

    def acquire() -> None:
        CircuitBreaker(NAME, GuardConfig(), SharedFileStore(tmp_path)).acquire()
        done.set()

    threading.Thread(target=acquire, daemon=True).start()
    assert done.wait(2), "lock of a killed process was not released"
    assert SharedFileStore(tmp_path).read(NAME).permits == 1  # its update never landed


def _lock_is_held(path: str) -> bool:
    # A separate descriptor in a process that holds no lock on this file.
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        assert exc.errno in (errno.EACCES, errno.EAGAIN)
        return True
    finally:
        os.close(fd)
    return False


# --- file format ------------------------------------------------------------------------


def _tripped(store) -> CircuitBreaker:
    breaker = CircuitBreaker(NAME, GuardConfig(failure_threshold=1), store)
    breaker.record(breaker.acquire(), success=False, duration_s=0.001)
    assert breaker.snapshot().state == State.OPEN
    return breaker


def test_file_of_another_layout_version_is_reinitialised(tmp_path):
    store = SharedFileStore(tmp_path)
    path = store.path_for(NAME)
    os.makedirs(tmp_path, exist_ok=True)
    with open(path, "wb") as f:  # an older, smaller layout
        f.write(struct.pack("<4sH", MAGIC, LAYOUT_VERSION - 1) + b"\x01" * 90)
    assert store.read(NAME) is None  # readers never repair
    breaker = CircuitBreaker(NAME, GuardConfig(), store)
    assert isinstance(breaker.acquire(), Permit)
    assert os.path.getsize(path) == FILE_SIZE
    rec = store.read(NAME)
    assert (rec.state, rec.generation, rec.permits) == (State.CLOSED, 0, 1)


def test_corrupted_file_is_reinitialised_in_place(tmp_path):
    store = SharedFileStore(tmp_path)
    breaker = _tripped(store)
    fd = os.open(store.path_for(NAME), os.O_RDWR)
    try:
        os.pwrite(fd, b"\xff" * 8, 300)  # garbage in the record body
    finally:
        os.close(fd)
    assert store.read(NAME) is None  # CRC mismatch
    got = breaker.acquire()  # the next writer starts over: fresh CLOSED
    assert isinstance(got, Permit) and got.generation == 0
    assert store.read(NAME).state == State.CLOSED


def test_failed_transaction_writes_nothing(tmp_path):
    for store in (MemoryStore(), SharedFileStore(tmp_path)):
        _tripped(store)
        with pytest.raises(RuntimeError):
            with store.transaction(NAME) as rec:
                rec.state = int(State.CLOSED)
                raise RuntimeError("breaker logic failed half-way")
        assert store.read(NAME).state == State.OPEN


def test_list_and_read_of_missing_breakers(tmp_path):
    store = SharedFileStore(tmp_path / "never-created")
    assert store.list_breakers() == []
    assert store.read(NAME) is None
    assert not (tmp_path / "never-created").exists()  # reading leaves no trace
    memory = MemoryStore()
    assert memory.read(NAME) is None and memory.list_breakers() == []


# --- names and directories ------------------------------------------------------------------


def test_breaker_filenames_are_safe_and_unique():
    assert breaker_filename("resnet50") == "resnet50.breaker"
    unsafe = breaker_filename("a/b")
    assert "/" not in unsafe and unsafe.startswith("a_b-")
    assert unsafe != breaker_filename("a_b") != breaker_filename("a b")
    assert len(breaker_filename("x" * 255)) < 128
    for bad in ("", "x" * 256):
        with pytest.raises(ValueError):
            breaker_filename(bad)


def test_list_breakers_returns_original_names(tmp_path):
    store = SharedFileStore(tmp_path)
    for name in ("b/model", "a model", "plain"):
        CircuitBreaker(name, GuardConfig(), store).acquire()
    (tmp_path / "junk.breaker").write_bytes(b"not a breaker")
    assert store.list_breakers() == ["a model", "b/model", "plain"]


def test_default_state_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(defaults.STATE_DIR_ENV, raising=False)
    expected_base = defaults.STATE_DIR_BASE if os.path.isdir(defaults.STATE_DIR_BASE) else None
    ours = default_state_dir()
    assert os.path.basename(ours) == f"{defaults.STATE_DIR_PREFIX}{os.getppid()}"
    if expected_base:
        assert os.path.dirname(ours) == expected_base
    assert default_state_dir(server_pid=4242).endswith(f"{defaults.STATE_DIR_PREFIX}4242")
    monkeypatch.setenv(defaults.STATE_DIR_ENV, str(tmp_path))
    assert default_state_dir() == str(tmp_path)
    assert default_state_dir(server_pid=4242) == str(tmp_path)
