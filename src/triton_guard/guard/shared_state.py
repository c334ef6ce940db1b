"""Where breaker records live.

MemoryStore      one process: a dict behind a threading.Lock (unit tests,
                 single-process use).
SharedFileStore  one server: one small mmap'ed file per breaker in a directory
                 shared by every guard stub process of a tritonserver (and
                 readable by the canary model, tests and a status command).

A transaction hands out a *copy* of the record and writes it back only when
the block ends without an exception, so a half-done update never lands.

File layout (little-endian, FILE_SIZE = 1408 bytes with WINDOW_SIZE_MAX=1024):

  off  size  field
    0     4  magic b"TGBR"
    4     2  layout version (u16)           other version -> reinitialised
    6     2  name length in bytes (u16)
    8     4  ring capacity (u32)            != WINDOW_SIZE_MAX -> reinitialised
   12     4  CRC-32 of bytes 16..end (u32)  mismatch (torn/corrupt) -> reinitialised
   16   256  breaker name, UTF-8, zero padded
  272   112  record body, see _BODY_FIELDS (6 x u64, 3 x f64, 9 x u32, 4 pad)
  384  1024  window ring, one byte per call (bit 0 failed, bit 1 slow)

Locking: `fcntl.lockf` on the whole file for the length of one transaction
(microseconds; never across an upstream call). The kernel drops the lock when
its process dies, so a killed stub cannot wedge the others. POSIX locks are
per process, so a per-file threading.Lock serialises threads of one process,
and every store in a process shares one open handle per file (closing a
second descriptor of the file would silently drop the process's lock).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import mmap
import operator
import os
import re
import struct
import tempfile
import threading
import zlib
from types import TracebackType

from triton_guard import defaults
from triton_guard.guard.breaker import BreakerRecord

MAGIC = b"TGBR"
LAYOUT_VERSION = 1
NAME_MAX = 255  # bytes of UTF-8; the name field is NAME_MAX + 1 bytes
FILE_SUFFIX = ".breaker"

_HEADER = struct.Struct("<4sHHII")  # magic, version, name length, ring capacity, crc32
_NAME_OFFSET = _HEADER.size  # 16; the CRC covers everything from here on
_BODY_FIELDS = (  # (BreakerRecord field, struct code), in layout order
    ("generation", "Q"),
    ("transitions", "Q"),
    ("permits", "Q"),
    ("rejections", "Q"),
    ("records", "Q"),
    ("stale_records", "Q"),
    ("since", "d"),
    ("opened_at", "d"),
    ("last_trial_at", "d"),
    ("state", "I"),
    ("consecutive_failures", "I"),
    ("window_size", "I"),
    ("window_count", "I"),
    ("window_head", "I"),
    ("window_failures", "I"),
    ("window_slow", "I"),
    ("trials_issued", "I"),
    ("trials_succeeded", "I"),
)
_BODY = struct.Struct("<" + "".join(code for _, code in _BODY_FIELDS) + "4x")
_BODY_OFFSET = _NAME_OFFSET + NAME_MAX + 1  # 272
_RING_OFFSET = _BODY_OFFSET + _BODY.size  # 384
RING_CAPACITY = defaults.WINDOW_SIZE_MAX
FILE_SIZE = _RING_OFFSET + RING_CAPACITY
_CRC = struct.Struct("<I")
_CRC_OFFSET = 12

_body_values = operator.attrgetter(*(name for name, _ in _BODY_FIELDS))
# BreakerRecord(*body_values, ring) relies on the two orders agreeing.
assert [f.name for f in dataclasses.fields(BreakerRecord)] == [
    *(name for name, _ in _BODY_FIELDS),
    "ring",
], "BreakerRecord fields and the file layout disagree"


# --- in-process store ------------------------------------------------------------


class MemoryStore:
    """Records in a dict; one process only."""

    def __init__(self) -> None:
        self._records: dict[str, BreakerRecord] = {}
        self._lock = threading.Lock()

    def transaction(self, name: str) -> _MemoryTransaction:
        return _MemoryTransaction(self, name)

    def read(self, name: str) -> BreakerRecord | None:
        with self._lock:
            rec = self._records.get(name)
            return rec.copy() if rec is not None else None

    def list_breakers(self) -> list[str]:
        with self._lock:
            return sorted(self._records)


class _MemoryTransaction:
    __slots__ = ("_store", "_name", "_rec")

    def __init__(self, store: MemoryStore, name: str) -> None:
        self._store = store
        self._name = name

    def __enter__(self) -> BreakerRecord:
        store = self._store
        store._lock.acquire()
        current = store._records.get(self._name)
        self._rec = current.copy() if current is not None else BreakerRecord()
        return self._rec

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._store._records[self._name] = self._rec
        finally:
            self._store._lock.release()


# --- shared file store -------------------------------------------------------------


def default_state_dir(server_pid: int | None = None) -> str:
    """The state directory of one tritonserver.

    `$TRITON_GUARD_STATE_DIR` if set; else /dev/shm/triton-guard-<pid> where
    pid is the server's: every python-backend stub is a direct child of
    tritonserver, so inside a stub the default (os.getppid()) is right. A
    process outside the server (status command, tests) passes server_pid.
    """
    override = os.environ.get(defaults.STATE_DIR_ENV)
    if override:
        return override
    pid = os.getppid() if server_pid is None else server_pid
    base = defaults.STATE_DIR_BASE
    if not os.path.isdir(base):  # not Linux: no tmpfs at /dev/shm
        base = tempfile.gettempdir()
    return os.path.join(base, f"{defaults.STATE_DIR_PREFIX}{pid}")


_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_STEM_MAX = 100  # keeps <stem>-<hash>.breaker well under NAME_MAX of filesystems


def breaker_filename(name: str) -> str:
    """A filename for a breaker name; altered names get a hash so they stay unique."""
    encoded = name.encode("utf-8")
    if not encoded or len(encoded) > NAME_MAX:
        raise ValueError(f"breaker name {name!r}: expected 1 to {NAME_MAX} bytes of UTF-8")
    stem = _UNSAFE_CHARS.sub("_", name)[:_STEM_MAX]
    if stem != name:
        stem += "-" + hashlib.sha256(encoded).hexdigest()[:12]
    return stem + FILE_SUFFIX


class SharedFileStore:
    """One mmap'ed file per breaker in `directory`, shared across processes."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        # The directory is created on the first transaction, not here, so
        # that a read-only user (status command) leaves no trace.
        self.directory = os.path.abspath(os.fspath(directory))
        self._files: dict[str, _BreakerFile] = {}

    def path_for(self, name: str) -> str:
        return os.path.join(self.directory, breaker_filename(name))

    def transaction(self, name: str) -> _BreakerFile:
        breaker_file = self._files.get(name)
        if breaker_file is None:
            breaker_file = self._files[name] = _open_breaker_file(self.path_for(name), name)
        return breaker_file

    def read(self, name: str) -> BreakerRecord | None:
        """The record as another process last wrote it; None if absent or unreadable.

        Never creates or repairs anything: a writer reinitialises bad files.
        """
        path = self.path_for(name)
        with _open_files_lock:
            breaker_file = _open_files.get(path)
            if breaker_file is None:
                # Held across the one-off read: closing its descriptor drops
                # this process's locks on the file, so no handle for the same
                # file may be created (and locked) meanwhile.
                return _read_once(path)
        return breaker_file.read()

    def list_breakers(self) -> list[str]:
        """Names of the breakers with a valid file in the directory."""
        try:
            entries = [e.path for e in os.scandir(self.directory) if e.name.endswith(FILE_SUFFIX)]
        except FileNotFoundError:
            return []
        names = []
        for path in entries:
            try:
                with open(path, "rb") as f:
                    head = f.read(_BODY_OFFSET)
            except OSError:
                continue
            name = _name_from_header(head)
            if name is not None:
                names.append(name)
        return sorted(names)


# One handle per file per process, shared by every SharedFileStore: see the
# module docstring on POSIX lock semantics.
_open_files: dict[str, _BreakerFile] = {}
_open_files_lock = threading.Lock()


def _open_breaker_file(path: str, name: str) -> _BreakerFile:
    with _open_files_lock:
        breaker_file = _open_files.get(path)
        if breaker_file is None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            breaker_file = _open_files[path] = _BreakerFile(path, name)
        return breaker_file


class _BreakerFile:
    """An open, mmap'ed breaker file; also the context manager of its transactions.

    The threading.Lock is held from __enter__ to __exit__, so the current
    record is never shared between threads.
    Not re-entrant: a nested transaction on the same breaker deadlocks.
    """

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name
        self._thread_lock = threading.Lock()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            # Several processes may create the file at once: whoever gets the
            # lock first sizes and initialises it, the others find it valid.
            fcntl.lockf(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size != FILE_SIZE or not _is_valid(os.pread(fd, FILE_SIZE, 0)):
                    os.ftruncate(fd, FILE_SIZE)
                    os.pwrite(fd, _initial_image(name), 0)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN)
            self._mm = mmap.mmap(fd, FILE_SIZE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._payload = memoryview(self._mm)[_NAME_OFFSET:]  # what the CRC covers
        self._ring = memoryview(self._mm)[_RING_OFFSET:]
        self._header_prefix = _initial_image(name)[:_CRC_OFFSET]  # all but the CRC
        self._rec: BreakerRecord | None = None

    def __enter__(self) -> BreakerRecord:
        self._thread_lock.acquire()
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                self._rec = self._load()
            except BaseException:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
                raise
        except BaseException:
            self._thread_lock.release()
            raise
        return self._rec

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._save(self._rec)
        finally:
            self._rec = None
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
            finally:
                self._thread_lock.release()

    def read(self) -> BreakerRecord | None:
        with self._thread_lock:
            fcntl.lockf(self._fd, fcntl.LOCK_SH)
            try:
                image = self._mm[:]
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
        return _decode(image)

    def _load(self) -> BreakerRecord:
        mm = self._mm
        crc_ok = _CRC.unpack_from(mm, _CRC_OFFSET)[0] == zlib.crc32(self._payload)
        if not crc_ok or mm[:_CRC_OFFSET] != self._header_prefix:
            # Corrupt, torn by a process killed mid-write, or rewritten by
            # another layout version: start over as a fresh CLOSED breaker.
            mm[:] = _initial_image(self.name)
        return BreakerRecord(*_BODY.unpack_from(mm, _BODY_OFFSET), bytearray(self._ring))

    def _save(self, rec: BreakerRecord) -> None:
        # Only here does the file change, after the breaker logic finished;
        # the CRC goes last, so a process killed mid-save leaves a mismatch.
        self._ring[:] = rec.ring  # wrong length -> ValueError before any write
        _BODY.pack_into(self._mm, _BODY_OFFSET, *_body_values(rec))
        _CRC.pack_into(self._mm, _CRC_OFFSET, zlib.crc32(self._payload))


def _read_once(path: str) -> BreakerRecord | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if os.fstat(fd).st_size != FILE_SIZE:
            return None
        fcntl.lockf(fd, fcntl.LOCK_SH)  # a consistent image, not a half-written one
        try:
            image = os.pread(fd, FILE_SIZE, 0)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return _decode(image)


def _initial_image(name: str) -> bytes:
    encoded = name.encode("utf-8")
    payload = bytearray(FILE_SIZE - _NAME_OFFSET)
    payload[: len(encoded)] = encoded
    fresh = BreakerRecord()
    _BODY.pack_into(payload, _BODY_OFFSET - _NAME_OFFSET, *_body_values(fresh))
    header = _HEADER.pack(MAGIC, LAYOUT_VERSION, len(encoded), RING_CAPACITY, zlib.crc32(payload))
    return header + payload


def _is_valid(image: bytes) -> bool:
    """Right size, magic, layout version, ring capacity and CRC."""
    if len(image) != FILE_SIZE:
        return False
    magic, version, name_len, capacity, crc = _HEADER.unpack_from(image, 0)
    return (
        magic == MAGIC
        and version == LAYOUT_VERSION
        and capacity == RING_CAPACITY
        and name_len <= NAME_MAX
        and crc == zlib.crc32(image[_NAME_OFFSET:])
    )


def _decode(image: bytes) -> BreakerRecord | None:
    if not _is_valid(image):
        return None
    values = _BODY.unpack_from(image, _BODY_OFFSET)
    return BreakerRecord(*values, bytearray(image[_RING_OFFSET:FILE_SIZE]))


def _name_from_header(head: bytes) -> str | None:
    if len(head) < _BODY_OFFSET:
        return None
    magic, version, name_len, capacity, _ = _HEADER.unpack_from(head, 0)
    if magic != MAGIC or version != LAYOUT_VERSION or name_len > NAME_MAX:
        return None
    try:
        return head[_NAME_OFFSET : _NAME_OFFSET + name_len].decode("utf-8")
    except UnicodeDecodeError:
        return None


def _reset_locks_in_child() -> None:
    # A fork taken while another thread held one of these locks would leave
    # it locked forever in the child.
    global _open_files_lock
    _open_files_lock = threading.Lock()
    for breaker_file in _open_files.values():
        breaker_file._thread_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_locks_in_child)


# --- small JSON documents beside the breakers (drift scores) -------------------


def write_json_state(directory: str | os.PathLike[str], filename: str, data: dict) -> None:
    """Atomically replace `filename` in the state directory: readers never see half a file."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, filename)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_json_state(directory: str | os.PathLike[str], filename: str) -> dict | None:
    """The document, or None when it was never written (or is unreadable)."""
    try:
        with open(os.path.join(directory, filename)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
