"""The drift window: a ring buffer of output rows, in memory or shared by a server's processes.

`RowRing(width, capacity)` keeps the last `capacity` rows (float64, `width`
values each) in memory. `RowRing.shared(path, width, capacity)` keeps them in
a small mmap'ed file instead, so every instance (stub process) of every guard
that watches one model feeds the same window, as they share one breaker.

File layout (little-endian): a 40-byte header, then capacity x width float64.

  off  size  field
    0     4  magic b"TGDR"
    4     2  layout version (u16)       other version, width or capacity -> reinitialised
    6     2  pad
    8     4  width (u32)
   12     4  capacity (u32)
   16     4  next slot (u32)
   20     4  rows held (u32)
   24     8  rows ever written (u64)
   32     8  probe rows skipped (u64): canary and probe answers never enter the window

Writers take a threading lock (threads of one process) and `flock` on the
file (processes); the kernel drops a dead writer's lock. A write is a copy of
the batch's rows and three header fields: microseconds, no statistics.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading

import numpy as np

MAGIC = b"TGDR"
LAYOUT_VERSION = 1
_HEADER = struct.Struct("<4sHxxIIIIQQ")
_COUNTERS = struct.Struct("<IIQ")  # next, held, total
_SKIPPED = struct.Struct("<Q")
_SKIPPED_OFFSET = 32
_COUNTERS_OFFSET = 16


class RowRing:
    def __init__(self, width: int, capacity: int, *, _buffer=None, _fd: int | None = None) -> None:
        if width < 1 or capacity < 1:
            raise ValueError(f"a ring needs width and capacity >= 1, got {width} and {capacity}")
        self.width = width
        self.capacity = capacity
        self._lock = threading.Lock()
        self._fd = _fd
        if _buffer is None:
            self._header = bytearray(_HEADER.size)
            self._rows = np.zeros((capacity, width))
        else:
            self._header = _buffer
            self._rows = np.ndarray((capacity, width), dtype="<f8", buffer=_buffer, offset=_HEADER.size)

    @classmethod
    def shared(cls, path: str | os.PathLike[str], width: int, capacity: int) -> "RowRing":
        """The ring in file `path` (created, or reinitialised when its shape differs)."""
        size = _HEADER.size + 8 * width * capacity
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                head = os.pread(fd, _HEADER.size, 0)
                fresh = len(head) < _HEADER.size or os.fstat(fd).st_size != size
                if not fresh:
                    magic, version, w, c, *_ = _HEADER.unpack(head)
                    fresh = (magic, version, w, c) != (MAGIC, LAYOUT_VERSION, width, capacity)
                if fresh:
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, size)
                    os.pwrite(fd, _HEADER.pack(MAGIC, LAYOUT_VERSION, width, capacity, 0, 0, 0, 0), 0)
                buffer = mmap.mmap(fd, size)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        return cls(width, capacity, _buffer=buffer, _fd=fd)

    def _counters(self) -> tuple[int, int, int]:
        return _COUNTERS.unpack_from(self._header, _COUNTERS_OFFSET)

    def _locked(self):
        return _RingLock(self._lock, self._fd)

    def write(self, rows: np.ndarray) -> None:
        """Append rows [k, width]; only the last `capacity` of a huge batch are kept, all are counted."""
        k_all = len(rows)
        if k_all == 0:
            return
        rows = rows[-self.capacity:]
        k = len(rows)
        with self._locked():
            slot, held, total = self._counters()
            first = min(k, self.capacity - slot)
            self._rows[slot : slot + first] = rows[:first]
            if first < k:
                self._rows[: k - first] = rows[first:]
            _COUNTERS.pack_into(self._header, _COUNTERS_OFFSET, (slot + k) % self.capacity,
                                min(held + k, self.capacity), total + k_all)

    def skip(self, k: int) -> None:
        """Count k probe rows that were not written."""
        with self._locked():
            (skipped,) = _SKIPPED.unpack_from(self._header, _SKIPPED_OFFSET)
            _SKIPPED.pack_into(self._header, _SKIPPED_OFFSET, skipped + k)

    def skipped(self) -> int:
        with self._locked():
            return _SKIPPED.unpack_from(self._header, _SKIPPED_OFFSET)[0]

    def snapshot(self) -> tuple[np.ndarray, int]:
        """(a copy of the rows held, in slot order, rows ever written)."""
        with self._locked():
            _, held, total = self._counters()
            return self._rows[:held].copy(), total

    def total(self) -> int:
        with self._locked():
            return self._counters()[2]

    def close(self) -> None:
        if self._fd is not None:
            self._rows = None
            self._header.close()
            os.close(self._fd)
            self._fd = None


class _RingLock:
    __slots__ = ("_thread_lock", "_fd")

    def __init__(self, thread_lock: threading.Lock, fd: int | None) -> None:
        self._thread_lock, self._fd = thread_lock, fd

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._thread_lock.release()
                raise

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()
