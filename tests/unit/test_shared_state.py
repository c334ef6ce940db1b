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
from triton_guard.guard import state_file as layout
from triton_guard.guard.breaker import CircuitBreaker
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.record import OUTCOME_FAILED, Permit, Rejection, State
from triton_guard.guard.shared_state import SharedFileStore, read_claim
from triton_guard.guard.state_dir import breaker_filename, default_state_dir
from triton_guard.guard.store import MemoryStore, SettingsConflict, breaker_settings

FILE_SIZE, LAYOUT_VERSION, MAGIC = layout.FILE_SIZE, layout.LAYOUT_VERSION, layout.MAGIC
NAME = "ensemble/upstream"  # a name that needs sanitising
# Never trips on fewer than 1024 failures: the hammer tests check bookkeeping, not transitions.
NEVER_TRIPS = dict(failure_threshold=1_000_000, window_size=1024, minimum_calls=1024)
SPAWN = multiprocessing.get_context("spawn")
JOIN_S = 10  # generous upper bound; the tests take well under a second each


def _hammer(directory: str, calls: int, start: multiprocessing.synchronize.Barrier) -> None:
    breaker = CircuitBreaker(NAME, GuardConfig(**NEVER_TRIPS), SharedFileStore(directory))
    start.wait()  # both processes create the file at the same moment
    for _ in range(calls):
        permit = breaker.acquire()
        assert isinstance(permit, Permit)
        breaker.record(permit, success=False, duration_s=0.001)  # every failure is one transaction


def _trip(directory: str) -> None:
    breaker = CircuitBreaker(NAME, GuardConfig(failure_threshold=3), SharedFileStore(directory))
    for _ in range(3):
        breaker.record(breaker.acquire(), success=False, duration_s=0.001)


def _hold_lock_forever(directory: str, holding: multiprocessing.synchronize.Event) -> None:
    with SharedFileStore(directory).transaction(NAME) as rec:
        rec.state = int(State.OPEN)  # never written back: the process dies first
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


def test_two_processes_hammering_one_breaker_lose_no_update(tmp_path):
    calls = 500
    start = SPAWN.Barrier(2)
    workers = [SPAWN.Process(target=_hammer, args=(str(tmp_path), calls, start)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(JOIN_S)
        assert worker.exitcode == 0
    rec = SharedFileStore(tmp_path).read(NAME)
    assert rec is not None
    assert rec.consecutive_failures == 2 * calls  # every failure of both processes counted: none lost
    assert (rec.generation, rec.state) == (0, State.CLOSED)
    assert rec.window_failures == _window_failures_in_ring(rec) == rec.window_count == 2 * calls


def test_threads_and_stores_in_one_process_share_one_handle(tmp_path):
    # POSIX locks are per process: two handles for one file would not exclude
    # each other, so every store must hand out the same one.
    first, second = SharedFileStore(tmp_path), SharedFileStore(tmp_path)
    assert first.transaction(NAME) is second.transaction(NAME)
    config = GuardConfig(**NEVER_TRIPS)

    def work(store: SharedFileStore) -> None:
        breaker = CircuitBreaker(NAME, config, store)
        for _ in range(250):
            breaker.record(breaker.acquire(), success=False, duration_s=0.001)

    threads = [threading.Thread(target=work, args=(s,)) for s in (first, second, first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert first.read(NAME).consecutive_failures == 1000


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
    assert SharedFileStore(tmp_path).read(NAME).state == State.CLOSED  # its update never landed


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


# --- the request path: a read, no lock, no write while nothing is pending ----------------------------


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now

    def past_the_check(self) -> None:
        """Past the interval after which the request path checks the whole file (under the lock) again."""
        self.now += defaults.STATE_CHECK_INTERVAL_S


def test_good_calls_with_nothing_pending_take_no_lock_and_write_nothing(tmp_path, monkeypatch):
    clock = Clock()
    store = SharedFileStore(tmp_path, clock=clock)
    breaker = CircuitBreaker(NAME, GuardConfig(window_size=5, minimum_calls=5), store, clock=clock)
    for _ in range(5):  # a fresh window fills first: these are written
        breaker.record(breaker.acquire(), success=True, duration_s=0.001)
    writes, locks = [], []
    real_pwrite, real_lockf = os.pwrite, fcntl.lockf
    monkeypatch.setattr(os, "pwrite", lambda *a: writes.append(a) or real_pwrite(*a))
    monkeypatch.setattr(fcntl, "lockf", lambda *a: locks.append(a) or real_lockf(*a))
    for _ in range(100):
        permit = breaker.acquire()
        assert permit.clean
        breaker.record(permit, success=True, duration_s=0.001)
    assert (writes, locks) == ([], [])
    breaker.record(breaker.acquire(), success=True, duration_s=10.0)  # slow: pending from now on
    assert len(writes) == 1
    assert not breaker.acquire().clean
    clock.past_the_check()
    breaker.acquire()  # the periodic check: a locked read; the file is fine, nothing to write
    assert len(writes) == 1 and len(locks) == 4


def test_a_torn_or_flipped_hot_block_is_never_believed(tmp_path):
    clock = Clock()
    store, reports = _store(tmp_path, clock)
    breaker = _tripped(store, clock)
    _pwrite(store.path_for(NAME), b"\x00\x00\x00\x00", layout.NUMBERS_OFFSET + 40)  # `state` and more: CLOSED
    got = breaker.acquire()  # the hot CRC fails: the locked path rebuilds from this process's copy
    assert isinstance(got, Rejection) and got.reason == "open"
    assert store.damage == {"corrupt": 1} and "rebuilt as OPEN" in reports[0]


# --- file format ------------------------------------------------------------------------


def _tripped(store, clock=time.monotonic) -> CircuitBreaker:
    breaker = CircuitBreaker(NAME, GuardConfig(failure_threshold=1), store, clock=clock)
    breaker.record(breaker.acquire(), success=False, duration_s=0.001)
    assert breaker.snapshot().state == State.OPEN
    return breaker


def test_file_of_another_layout_version_is_a_new_breaker(tmp_path):
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
    assert (rec.state, rec.generation, rec.transitions) == (State.CLOSED, 0, 0) and rec.since > 0
    assert store.damage == {}  # not damage: nothing was lost


def test_an_image_of_another_breaker_never_passes_for_this_one(tmp_path):
    store = SharedFileStore(tmp_path)
    CircuitBreaker("abcd", GuardConfig(), store).acquire()
    other = CircuitBreaker("wxyz", GuardConfig(failure_threshold=1), store)  # same name length
    other.record(other.acquire(), success=False, duration_s=0.001)
    with open(store.path_for("wxyz"), "rb") as f:
        image = f.read()
    assert layout.is_valid(image) and not layout.is_valid(image, layout.header_prefix("abcd"))
    assert layout.hot_numbers(image[: layout.HOT_SIZE], layout.header_prefix("abcd")) is None


# --- damage: whatever happens to the file, no crash, no silent CLOSED -----------------------


class Reports(list):
    def __call__(self, message: str) -> None:
        self.append(message)


def _store(directory, clock=time.monotonic) -> tuple[SharedFileStore, Reports]:
    reports = Reports()
    return SharedFileStore(directory, report=reports, clock=clock), reports


def _pwrite(path: str, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [0, 100, FILE_SIZE - 1])
def test_truncated_file_keeps_an_open_breaker_open(tmp_path, size):
    clock = Clock()
    store, reports = _store(tmp_path, clock)
    breaker = _tripped(store, clock)
    os.truncate(store.path_for(NAME), size)  # an mmap'ed file died of SIGBUS here
    got = breaker.acquire()  # a file cut inside its hot block is repaired at once; else at the next check
    assert isinstance(got, Rejection) and got.reason == "open"
    clock.past_the_check()
    got = breaker.acquire()
    assert isinstance(got, Rejection) and got.reason == "open"
    assert os.path.getsize(store.path_for(NAME)) == FILE_SIZE
    assert store.read(NAME).state == State.OPEN
    assert store.damage == {"truncated": 1} and len(reports) == 1 and "truncated" in reports[0]
    clock.past_the_check()
    breaker.acquire()
    assert store.damage == {"truncated": 1}  # reported once, not on every call


def test_corrupt_open_record_stays_open_and_a_closed_one_gets_a_trial(tmp_path):
    store, reports = _store(tmp_path)
    breaker = _tripped(store)
    hot = layout.NUMBERS_OFFSET + 8
    _pwrite(store.path_for(NAME), b"\xff" * 4, hot)  # four flipped bytes in the record's numbers
    assert isinstance(breaker.acquire(), Rejection)  # was: silently CLOSED again
    assert store.damage == {"corrupt": 1} and "rebuilt as OPEN" in reports[0]

    closed = CircuitBreaker("other", GuardConfig(), store)
    generation = closed.acquire().generation
    _pwrite(store.path_for("other"), b"\xff" * 4, hot)
    trial = closed.acquire()  # unknown state: HALF_OPEN, one trial call decides
    assert isinstance(trial, Permit) and trial.trial and trial.generation == generation + 1
    assert isinstance(closed.acquire(), Rejection)  # not everyone at once
    closed.record(trial, success=True, duration_s=0.001)
    assert closed.snapshot().state == State.CLOSED


def test_a_damaged_window_keeps_the_state_with_a_fresh_window(tmp_path):
    clock = Clock()
    store, reports = _store(tmp_path, clock)
    breaker = CircuitBreaker(NAME, GuardConfig(failure_threshold=3), store, clock=clock)
    breaker.record(breaker.acquire(), success=False, duration_s=0.001)
    _pwrite(store.path_for(NAME), b"\x07" * 8, layout.RING_OFFSET)  # the ring: not the state
    clock.past_the_check()
    assert isinstance(breaker.acquire(), Permit)  # the numbers are intact: still CLOSED
    rec = store.read(NAME)
    assert (rec.state, rec.consecutive_failures, rec.window_count) == (State.CLOSED, 1, 0)
    assert store.damage == {"corrupt": 1} and "rebuilt as CLOSED" in reports[0]


def _acquire_in_fresh_process(directory: str, result: multiprocessing.Queue) -> None:
    got = CircuitBreaker(NAME, GuardConfig(failure_threshold=1), SharedFileStore(directory)).acquire()
    result.put((type(got).__name__, getattr(got, "trial", None)))


def test_corrupt_file_met_by_a_process_that_never_saw_it_is_half_open(tmp_path):
    store, _ = _store(tmp_path)
    _tripped(store)
    _pwrite(store.path_for(NAME), b"\xff" * 4, layout.NUMBERS_OFFSET + 8)
    result = SPAWN.Queue()
    _run(_acquire_in_fresh_process, str(tmp_path), result)
    assert result.get(timeout=JOIN_S) == ("Permit", True)


def test_deleted_file_is_recreated_with_its_state_and_followed(tmp_path):
    clock = Clock()
    store, reports = _store(tmp_path, clock)
    breaker = _tripped(store, clock)
    os.unlink(store.path_for(NAME))
    clock.past_the_check()  # the path is checked once per interval
    assert isinstance(breaker.acquire(), Rejection)
    assert os.path.exists(store.path_for(NAME))
    assert store.damage == {"missing": 1} and len(reports) == 1
    # Another process attaching now finds the same OPEN breaker.
    result = SPAWN.Queue()
    _run(_acquire_in_fresh_process, str(tmp_path), result)
    assert result.get(timeout=JOIN_S)[0] == "Rejection"


def test_a_fresh_breaker_made_by_a_newcomer_after_a_delete_does_not_close_an_open_one(tmp_path):
    store, _ = _store(tmp_path)
    breaker = _tripped(store)
    os.unlink(store.path_for(NAME))
    result = SPAWN.Queue()
    _run(_acquire_in_fresh_process, str(tmp_path), result)  # makes a new CLOSED file (and takes > 0.1 s)
    assert result.get(timeout=JOIN_S)[0] == "Permit"
    assert isinstance(breaker.acquire(), Rejection)  # the old guard follows, and keeps it OPEN
    assert SharedFileStore(tmp_path).read(NAME).state == State.OPEN


def test_a_closed_copy_never_overwrites_an_open_breaker_made_at_the_path_after_a_delete(tmp_path):
    # Process A has seen a full cycle (OPEN, HALF_OPEN, CLOSED: 3 transitions) and holds a CLOSED copy.
    store, _ = _store(tmp_path)
    a = CircuitBreaker(NAME, GuardConfig(failure_threshold=1), store)
    a.record(a.acquire(), success=False, duration_s=0.001)
    a.probe_succeeded(a.snapshot().generation)
    a.record(a.acquire(), success=True, duration_s=0.001)
    assert (a.snapshot().state, a.snapshot().transitions) == (State.CLOSED, 3)
    os.unlink(store.path_for(NAME))
    _run(_trip, str(tmp_path))  # process B makes a new file at the path and trips it OPEN (1 transition; > 0.1 s)
    assert isinstance(a.acquire(), Rejection)  # A follows the path and keeps B's OPEN
    assert SharedFileStore(tmp_path).read(NAME).state == State.OPEN


def test_replaced_file_is_followed(tmp_path):
    clock = Clock()
    store, _ = _store(tmp_path, clock)
    breaker = _tripped(store, clock)
    path = store.path_for(NAME)
    with open(path, "rb") as f:
        image = f.read()
    os.unlink(path)
    with open(path + ".new", "wb") as f:
        f.write(image)
    os.replace(path + ".new", path)  # same content, another inode
    clock.past_the_check()
    assert isinstance(breaker.acquire(), Rejection)
    assert os.stat(path).st_ino == os.fstat(store.transaction(NAME)._fd).st_ino


def test_removed_directory_is_recreated(tmp_path):
    import shutil

    clock = Clock()
    directory = tmp_path / "state"
    store, reports = _store(directory, clock)
    breaker = _tripped(store, clock)
    shutil.rmtree(directory)
    clock.past_the_check()
    assert isinstance(breaker.acquire(), Rejection)
    assert SharedFileStore(directory).read(NAME).state == State.OPEN
    assert store.damage == {"missing": 1}


def test_unwritable_file_leaves_the_breaker_in_memory_and_retries(tmp_path, monkeypatch):
    now = [1000.0]
    reports = Reports()
    store = SharedFileStore(tmp_path, clock=lambda: now[0], report=reports)
    config = GuardConfig(failure_threshold=2)
    breaker = CircuitBreaker(NAME, config, store, clock=lambda: now[0])
    breaker.record(breaker.acquire(), success=False, duration_s=0.001)
    real_pwrite, real_open = os.pwrite, os.open

    def refuse(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "pwrite", refuse)  # as with chattr +i: writes fail, and so does O_RDWR
    monkeypatch.setattr(os, "open", lambda path, flags, *a: refuse() if flags & os.O_RDWR else real_open(path, flags, *a))
    permit = breaker.acquire()
    transition = breaker.record(permit, success=False, duration_s=0.001)  # the second failure, in memory
    assert transition is not None and transition.to_state == State.OPEN
    assert isinstance(breaker.acquire(), Rejection)
    assert store.damage == {"unusable": 1} and len(reports) == 1
    now[0] += 5  # still unusable after the retry period: not reported again
    assert isinstance(breaker.acquire(), Rejection)
    assert store.damage == {"unusable": 1}
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    monkeypatch.setattr(os, "open", real_open)
    now[0] += 5
    assert isinstance(breaker.acquire(), Rejection)  # the file still said CLOSED: the OPEN copy wins
    assert SharedFileStore(tmp_path).read(NAME).state == State.OPEN
    assert "usable again" in reports[-1]


# --- claims: one breaker, one configuration ----------------------------------------------


def test_second_guard_with_other_settings_is_refused_naming_both_and_the_differences(tmp_path):
    store = SharedFileStore(tmp_path)
    store.claim("classifier", "classifier_guard", breaker_settings(GuardConfig()))
    store.claim("classifier", "preprocess_guarded", breaker_settings(GuardConfig(max_inflight=2)))  # per instance
    other = GuardConfig(window_size=10, minimum_calls=5)
    with pytest.raises(SettingsConflict) as info:
        SharedFileStore(tmp_path).claim("classifier", "pipeline_inline", breaker_settings(other))
    message = str(info.value)
    assert "'pipeline_inline'" in message and "'classifier_guard'" in message and "'preprocess_guarded'" in message
    assert "window_size=10 here, 20 there" in message and "minimum_calls=5 here, 10 there" in message
    assert "failure_threshold" not in message
    # A reload of one of two claimers with new settings is refused too: they would differ silently.
    with pytest.raises(SettingsConflict):
        store.claim("classifier", "classifier_guard", breaker_settings(other))


def test_the_only_claimer_may_change_its_settings(tmp_path):
    store = SharedFileStore(tmp_path)
    store.claim(NAME, "guard_a", breaker_settings(GuardConfig()))
    store.claim(NAME, "guard_a", breaker_settings(GuardConfig(failure_threshold=2)))  # reloaded
    assert read_claim(tmp_path, NAME) == {"models": ["guard_a"], "settings": breaker_settings(GuardConfig(failure_threshold=2))}
    with pytest.raises(SettingsConflict, match="'guard_b' and guard model\\(s\\) 'guard_a'"):
        store.claim(NAME, "guard_b", breaker_settings(GuardConfig()))



def test_claimers_known_to_be_gone_are_dropped_before_the_check(tmp_path):
    for store in (SharedFileStore(tmp_path), MemoryStore()):
        store.claim(NAME, "guard_a", breaker_settings(GuardConfig()))
        store.claim(NAME, "guard_b", breaker_settings(GuardConfig()))
        other = breaker_settings(GuardConfig(failure_threshold=2))
        with pytest.raises(SettingsConflict, match="'guard_c' and guard model\\(s\\) 'guard_b'"):
            store.claim(NAME, "guard_c", other, gone={"guard_a"})  # guard_b still runs: refused
        store.claim(NAME, "guard_c", other, gone={"guard_a", "guard_b"})
    assert read_claim(tmp_path, NAME) == {"models": ["guard_c"], "settings": other}

def test_claim_survives_a_rebuilt_file_and_other_processes_see_it(tmp_path):
    store, _ = _store(tmp_path)
    store.claim(NAME, "guard_a", breaker_settings(GuardConfig()))
    os.truncate(store.path_for(NAME), 0)
    CircuitBreaker(NAME, GuardConfig(), store).acquire()
    assert read_claim(tmp_path, NAME) == {"models": ["guard_a"], "settings": breaker_settings(GuardConfig())}
    memory = MemoryStore()
    memory.claim(NAME, "guard_a", {"timeout_ms": 1})
    memory.claim(NAME, "guard_b", {"timeout_ms": 1})
    with pytest.raises(SettingsConflict):
        memory.claim(NAME, "guard_c", {"timeout_ms": 2})


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

