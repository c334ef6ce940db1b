"""The bulkhead's workers: a call runs on one, the caller waits for it until the deadline and no longer.

Why threads and not asyncio: a non-decoupled Python instance runs one execute
at a time anyway, so the only concurrency needed is "give up waiting at the
deadline". A timed-out call keeps its worker until the upstream answers; the
bulkhead is the workers themselves (`max_inflight` of them, abandoned calls
included), so there is always a free worker for the next admitted call and a
hung upstream can never starve the guard (the asyncio default executor has
only min(32, cpus + 4) threads).

The hand-off is the cheapest CPython offers for this: a worker sleeps in a
read of its own eventfd (a pipe where there is none), the caller wakes it with
one write and sleeps on a lock of this call with the timeout; no Future, no
queue, no condition variable. A worker puts itself back among the idle ones
before it wakes its caller, so a caller calling again at once always finds its
finished call's worker free.

Where the two threads wake decides what the trip costs. On the CPU the
other one is leaving (it is about to sleep) the GIL changes hands without a
fight; on another, idle CPU a wake is an inter-processor interrupt and an
idle exit, which on a virtual machine cost tens of microseconds each way. So
the caller pins the worker and itself to its current CPU for the two wakes;
the worker restores its own CPU mask before it runs the call (threads the
call starts, a torch thread pool say, inherit the worker's mask: they must
get the whole of it) and the caller restores its own once woken. Measured on
the project's 2-vCPU box with nothing else running: a trip around a no-op
costs 21 us of CPU pinned against 31 us left to the scheduler, and a model's
50 us execute run on a worker costs 29 us more than on its caller pinned,
40 us more left to the scheduler. Where CPU affinity cannot be set (no
sched_getcpu, a refusing kernel, a CPU set that changed) the wakes are left to
the scheduler. The pinning is off unless TRITON_GUARD_HANDOFF_PINNING=1
(defaults.HANDOFF_PINNING_ENV): serving the digits pipeline (scripts/bench_guard.py,
same window, 3 rounds) it bought nothing over the scheduler (0.95x against
0.97x unguarded throughput at concurrency 16, +0.18 ms at 1 either way) and
cost CPU per request (1.16x against 1.10x), while it makes four affinity
system calls per call and depends on the pod's CPU set staying put.
"""

from __future__ import annotations

import ctypes
import os
import threading
from _thread import allocate_lock
from typing import Any, Callable

from triton_guard import defaults
from triton_guard.errors import CallTimedOut


def _sched_getcpu() -> Callable[[], int] | None:
    """glibc's sched_getcpu (the CPU the calling thread runs on), or None where there is none."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sched_getcpu
    except (OSError, AttributeError):
        return None
    function.restype, function.argtypes = ctypes.c_int, []
    return function if function() >= 0 else None


_current_cpu = _sched_getcpu()


class _Wake:
    """One sleeper, woken by writes: an eventfd on Linux, else a pipe."""

    __slots__ = ("_read_fd", "_write_fd", "wait", "wake")

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            fd = self._read_fd = self._write_fd = os.eventfd(0, os.EFD_CLOEXEC)
            self.wait = lambda: os.eventfd_read(fd)
            self.wake = lambda: os.eventfd_write(fd, 1)
        else:
            read_fd, write_fd = self._read_fd, self._write_fd = os.pipe()
            self.wait = lambda: os.read(read_fd, 1)
            self.wake = lambda: os.write(write_fd, b"x")

    def close(self) -> None:
        for fd in {self._read_fd, self._write_fd}:
            os.close(fd)


class _Worker:
    __slots__ = ("_pool", "_wake", "_job", "thread", "tid", "_started")

    def __init__(self, pool: DeadlineWorkers, name: str) -> None:
        self._pool = pool
        self._wake = _Wake()
        self._job: tuple | None = None
        self.tid = 0  # the thread's native id, once it runs
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()
        self._started.wait()

    def _loop(self) -> None:
        wait, idle = self._wake.wait, self._pool._idle
        self.tid = threading.get_native_id()
        own_cpus = os.sched_getaffinity(0) if _current_cpu is not None else None
        self._started.set()
        while True:
            wait()
            job, self._job = self._job, None
            if job is None:  # closed
                self._wake.close()
                return
            fn, box, done, pinned = job
            if pinned:  # woken on its caller's CPU: its own mask back before the call runs
                try:
                    os.sched_setaffinity(0, own_cpus)
                except OSError:
                    pass
            try:
                box[0] = fn()
            except BaseException as exc:  # noqa: BLE001 (the caller decides what it means)
                box[1] = exc
            idle.append(self)  # free before the caller wakes
            done.release()

    def start(self, job: tuple | None) -> None:
        self._job = job
        self._wake.wake()


class DeadlineWorkers:
    """At most `size` calls at once, each waited for until its own timeout."""

    def __init__(self, size: int, name: str = "guard") -> None:
        self.size = size
        self.name = name
        self._idle: list[_Worker] = []
        self._started = 0
        self._spawn_lock = threading.Lock()
        self._closed = False
        self._pin = _current_cpu is not None and os.environ.get(defaults.HANDOFF_PINNING_ENV, "0") == "1"
        self._callers = threading.local()

    @property
    def inflight(self) -> int:
        """Calls not yet returned, abandoned (timed-out) ones included."""
        return self._started - len(self._idle)

    def take(self) -> _Worker | None:
        """A free worker for one call, or None when all `size` are busy (the bulkhead is full)."""
        try:
            return self._idle.pop()
        except IndexError:
            pass
        with self._spawn_lock:
            if self._started >= self.size or self._closed:
                return None
            self._started += 1
            return _Worker(self, f"{self.name}-{self._started}")

    def run(self, worker: _Worker, fn: Callable[[], Any], timeout_s: float) -> Any:
        """fn() on `worker` (from `take`); its value, its exception, or CallTimedOut after timeout_s."""
        done = allocate_lock()
        done.acquire()
        box = [None, None]
        worker_pinned = caller_pinned = False
        if self._pin:  # both on this CPU for the two wakes (module docstring)
            try:
                here = (_current_cpu(),)
                own_cpus = getattr(self._callers, "cpus", None)
                if own_cpus is None:
                    own_cpus = self._callers.cpus = os.sched_getaffinity(0)  # this caller's mask, read once
                os.sched_setaffinity(worker.tid, here)
                worker_pinned = True  # from here on the worker must restore its own mask, whatever follows
                os.sched_setaffinity(0, here)
                caller_pinned = True
            except OSError:
                self._pin = False  # not allowed here: leave it to the scheduler from now on
        worker.start((fn, box, done, worker_pinned))
        answered = done.acquire(True, max(timeout_s, 0.0))
        if caller_pinned:
            try:
                os.sched_setaffinity(0, own_cpus)
            except OSError:  # the pod's CPU set changed under us: stop pinning, never fail the call for it
                self._pin = False
                self._callers.cpus = None
        if not answered:
            raise CallTimedOut
        if box[1] is not None:
            raise box[1]
        return box[0]

    def close(self) -> None:
        """Stop the idle workers; busy ones end with their call (they are daemon threads)."""
        with self._spawn_lock:
            self._closed = True
        while True:
            try:
                worker = self._idle.pop()
            except IndexError:
                return
            worker.start(None)
