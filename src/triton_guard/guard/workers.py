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
queue, no condition variable. A write to an eventfd or a pipe is a "sync"
wake-up for the kernel (the waker is about to sleep), so the worker runs on
the caller's CPU and the GIL changes hands without a fight: measured on a
2-core box, 6 us of CPU per trip against 14 us for a wake through a lock
(scripts/bench_guard_path.py, the hand-off row). A worker puts itself back
among the idle ones before it wakes its caller, so a caller calling again at
once always finds its finished call's worker free.
"""

from __future__ import annotations

import os
import threading
from _thread import allocate_lock
from typing import Any, Callable

from triton_guard.errors import CallTimedOut


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
    __slots__ = ("_pool", "_wake", "_job", "thread")

    def __init__(self, pool: DeadlineWorkers, name: str) -> None:
        self._pool = pool
        self._wake = _Wake()
        self._job: tuple | None = None
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        wait, idle = self._wake.wait, self._pool._idle
        while True:
            wait()
            job, self._job = self._job, None
            if job is None:  # closed
                self._wake.close()
                return
            fn, box, done = job
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
        worker.start((fn, box, done))
        if not done.acquire(True, max(timeout_s, 0.0)):
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
