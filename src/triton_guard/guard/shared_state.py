"""SharedFileStore: one breaker per upstream per server, in a file every guard process shares.

One file per breaker in the server's state directory (state_dir.py), read by
the canary and `status` too; its layout: state_file.py. Read and written with
pread/pwrite, never mmap'ed: a file truncated under a mapping kills with SIGBUS.

Two paths. `peek` (the request path) reads the 96-byte hot block without a
lock: one pread and a CRC of 80 bytes. A transaction (everything that
changes the record) takes the file lock, reads the whole image, checks it,
and writes it back if it changed. Every STATE_CHECK_INTERVAL_S `peek` sends
its caller through a transaction instead, so the path is followed and the
whole record checked at least that often while a breaker is in use.

Damage. A transaction checks, under the lock, that the path still names the
file this process has open, so a deleted or replaced file (or a removed
directory) is followed and every guard converges on the file now at the path.
What it then keeps follows one rule, a damaged or unknown record is never
taken to mean CLOSED (the cases: repair.py). A file that cannot be opened or
written (read-only, immutable, directory gone and not creatable) leaves the
process on its own copy in memory, retried every DAMAGE_RETRY_S. Each event
is reported once (`report`, stderr by default) and counted in
`SharedFileStore.damage` for a metric.

Locking: `fcntl.lockf` on the whole file for the length of one transaction
(microseconds; never across an upstream call). The kernel drops the lock when
its process dies, so a killed stub cannot wedge the others. POSIX locks are
per process, so a per-file threading.Lock serialises threads of one process,
and every store in a process shares one open handle per file (closing a
second descriptor of the file would silently drop the process's lock).
"""

from __future__ import annotations

import collections
import fcntl
import os
import sys
import threading
import time
from typing import Callable, Collection, Mapping

from triton_guard import defaults
from triton_guard.guard import repair
from triton_guard.guard import state_file as layout
from triton_guard.guard.record import BreakerRecord
from triton_guard.guard.state_dir import FILE_SUFFIX, breaker_filename
from triton_guard.errors import SettingsConflict
from triton_guard.guard.store import Transaction, conflict, merged_claim, without

DAMAGE_RETRY_S = 1.0  # an unusable breaker file is tried again this often


def _report_to_stderr(message: str) -> None:
    print(f"triton-guard: {message}", file=sys.stderr, flush=True)


class SharedFileStore:
    """One breaker file per breaker in `directory`, shared across processes.

    `report(message)` is told each damage event once (stderr by default; the
    guard passes Triton's logger); `damage` counts them by kind: missing,
    replaced, truncated, corrupt, unusable.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        report: Callable[[str], None] = _report_to_stderr,
        check_interval_s: float = defaults.STATE_CHECK_INTERVAL_S,
    ) -> None:
        # The directory is created on the first transaction, not here, so
        # that a read-only user (status command) leaves no trace.
        self.directory = os.path.abspath(os.fspath(directory))
        self._clock = clock
        self._report = report
        self.check_interval_s = check_interval_s
        self.damage: collections.Counter[str] = collections.Counter()
        self._files: dict[str, _BreakerFile] = {}

    def path_for(self, name: str) -> str:
        return os.path.join(self.directory, breaker_filename(name))

    def transaction(self, name: str) -> _BreakerFile:
        breaker_file = self._files.get(name)
        if breaker_file is None:
            breaker_file = self._files[name] = _open_breaker_file(self.path_for(name), name, self)
        return breaker_file

    def peek(self, name: str, now: float) -> tuple | None:
        breaker_file = self._files.get(name)
        return None if breaker_file is None else breaker_file.peek(now)

    def claim(self, name: str, model: str, settings: Mapping[str, object], gone: Collection[str] = ()) -> None:
        """Stamp breaker `name` as run by guard `model` with `settings` (store.breaker_settings()).

        Raises SettingsConflict when a guard of another model claimed it
        with other settings; the models in `gone` (known to be unloaded, or
        no longer guards) are dropped from the claim first.
        """
        self.transaction(name).claim(model, settings, gone)

    def read(self, name: str) -> BreakerRecord | None:
        """The record as last written; None if absent or unreadable. Never creates or repairs."""
        path = self.path_for(name)
        with _open_files_lock:
            breaker_file = _open_files.get(path)
            if breaker_file is None:
                # Held across the one-off read: closing its descriptor drops
                # this process's locks on the file, so no handle for the same
                # file may be created (and locked) meanwhile.
                return repair.record_as_read(name, _read_once_image(path), None, self._clock())
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
                    head = f.read(layout.RING_OFFSET)
            except OSError:
                continue
            name = layout.name_from_header(head)
            if name is not None:
                names.append(name)
        return sorted(names)


# One handle per file per process, shared by every SharedFileStore: see the
# module docstring on POSIX lock semantics.
_open_files: dict[str, _BreakerFile] = {}
_open_files_lock = threading.Lock()


def _open_breaker_file(path: str, name: str, store: SharedFileStore) -> _BreakerFile:
    with _open_files_lock:
        breaker_file = _open_files.get(path)
        if breaker_file is None:
            breaker_file = _open_files[path] = _BreakerFile(path, name, store)
        return breaker_file


class _BreakerFile(Transaction):
    """This process's handle on one breaker file; also the context manager of its transactions.

    The threading.Lock is held from __enter__ to __exit__, so the current
    record is never shared between threads.
    Not re-entrant: a nested transaction on the same breaker deadlocks.
    """

    def __init__(self, path: str, name: str, store: SharedFileStore) -> None:
        self.path = path
        self.name = name
        self._store = store  # the first store of this process to open it: clock, report, counts
        self._thread_lock = threading.Lock()
        self._prefix = layout.header_prefix(name)
        self._fd: int | None = None  # published only once the file it names has been checked
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._locked = False
        self._good: bytes | None = None  # the last valid image this process read or wrote
        self._claim: bytes | None = None  # this process's claim, restamped on a rebuilt file
        self._unusable_until = 0.0  # while the clock is below it, records stay in memory
        self._check_due = 0.0  # peek answers None from then on, until a transaction checks the file
        self._image: bytearray | None = None
        self._read: bytes | None = None
        self._rec: BreakerRecord | None = None

    # --- the request path ---------------------------------------------------------

    def peek(self, now: float) -> tuple | None:
        """The hot block's numbers (Numbers' order), without a lock; None: take a transaction (check due, damage, no file)."""
        fd = self._fd
        if fd is None or now >= self._check_due:
            return None
        try:
            hot = os.pread(fd, layout.HOT_SIZE, 0)
        except OSError:  # closed by a transaction following the path meanwhile
            return None
        return layout.hot_numbers(hot, self._prefix)  # None on a torn read or damage: the lock decides

    # --- transactions ----------------------------------------------------------

    def __enter__(self) -> BreakerRecord:
        self._thread_lock.acquire()
        try:
            self._image = self._begin()
            self._rec = layout.record_of(self._image)
        except BaseException:
            self._end()
            raise
        return self._rec

    def _commit(self) -> None:
        layout.pack_record(self._image, self._rec)
        self._write(self._image)

    def claim(self, model: str, settings: Mapping[str, object], gone: Collection[str] = ()) -> None:
        with self._thread_lock:
            try:
                image = self._begin()
                current = without(layout.decode_claim(image), gone)
                problem = conflict(self.name, model, settings, current)
                if problem:
                    raise SettingsConflict(problem)
                region = layout.encode_claim(merged_claim(current, model, settings))
                self._claim = region
                if bytes(image[layout.CLAIM_OFFSET :]) != region:
                    image[layout.CLAIM_OFFSET :] = region
                    layout.seal(image)
                    self._write(image)
            finally:
                self._unlock()
                self._read = None

    def read(self) -> BreakerRecord | None:
        with self._thread_lock:
            # Damaged: what its next call will repair it to (repair.record_as_read), never CLOSED.
            return repair.record_as_read(self.name, _read_once_image(self.path), self._good, self._store._clock())

    # --- the file ----------------------------------------------------------------

    def _begin(self) -> bytearray:
        """Lock the file and return a valid image of it, repairing damage; or the copy in memory."""
        now = self._store._clock()
        if self._fd is None and now < self._unusable_until:
            return self._memory_image(now)
        try:
            moved = self._follow_path()
            found = os.pread(self._fd, layout.FILE_SIZE + 1, 0)  # one byte more: a file that grew
            image = self._checked(found, moved, now)
            if bytes(image) != found:
                os.pwrite(self._fd, image, 0)
                if len(found) > layout.FILE_SIZE:
                    os.ftruncate(self._fd, layout.FILE_SIZE)
            self._good = self._read = bytes(image)
            self._check_due = now + self._store.check_interval_s
            return image
        except OSError as exc:
            self._unlock()
            self._close()
            if not self._unusable_until:
                self._damaged(
                    "unusable",
                    f"state file {self.path} is unusable ({exc.strerror or exc}); this process keeps "
                    f"the breaker in memory and retries every {DAMAGE_RETRY_S:g} s",
                )
            self._unusable_until = now + DAMAGE_RETRY_S
            return self._memory_image(now)

    def _checked(self, found: bytes, moved: bool, now: float) -> bytearray:
        """What the file should hold (repair.py), with any damage reported."""
        returning = bool(self._unusable_until)
        if returning:
            self._unusable_until = 0.0
            self._store._report(f"breaker '{self.name}': state file {self.path} usable again")
        verdict = repair.checked_image(
            self.name, found, good=self._good, claim=self._claim_region(), moved=moved, returning=returning, now=now
        )
        if verdict.damage is not None:
            self._damaged(verdict.damage, f"state file {self.path} was {verdict.damage}; {verdict.outcome}")
        return verdict.image

    def _follow_path(self) -> bool:
        """Open (and lock) the file the path names now; True if that is not the one held before."""
        moved = False
        for _ in range(3):
            if self._fd is None:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                st = os.fstat(fd)
                self._fd, self._identity = fd, (st.st_dev, st.st_ino)
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            self._locked = True
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._identity:
                    return moved
            except FileNotFoundError:
                pass
            # Deleted, replaced, or its directory removed: follow the path. Until this
            # transaction has checked the new file, `peek` must not read it.
            self._check_due = 0.0
            self._unlock()
            self._close()
            moved = self._good is not None
        raise OSError(f"{self.path} keeps being replaced")

    def _claim_region(self) -> bytes:
        if self._claim is not None:
            return self._claim
        if self._good is not None:
            return self._good[layout.CLAIM_OFFSET :]
        return bytes(layout.CLAIM_SIZE)

    def _memory_image(self, now: float) -> bytearray:
        if self._good is None:  # nothing known: never CLOSED
            self._good = bytes(repair.rebuilt_image(self.name, None, self._claim_region(), now))
        self._read = None
        return bytearray(self._good)

    def _write(self, image: bytearray) -> None:
        if self._read is not None and image == self._read:
            return  # unchanged (the periodic check of a breaker with nothing to record)
        self._good = bytes(image)
        if self._fd is None or not self._locked:
            return  # unusable file: the record lives in memory until it is usable again
        try:
            os.pwrite(self._fd, image, 0)
        except OSError as exc:
            self._unlock()
            self._close()
            self._damaged(
                "unusable",
                f"state file {self.path} cannot be written ({exc.strerror or exc}); this process keeps "
                f"the breaker in memory and retries every {DAMAGE_RETRY_S:g} s",
            )
            self._unusable_until = self._store._clock() + DAMAGE_RETRY_S

    def _damaged(self, kind: str, message: str) -> None:
        self._store.damage[kind] += 1
        self._store._report(f"breaker '{self.name}': {message}")

    def _unlock(self) -> None:
        if self._locked:
            self._locked = False
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _end(self) -> None:
        self._rec = self._image = self._read = None
        try:
            self._unlock()
        finally:
            self._thread_lock.release()


def _read_once_image(path: str) -> bytes | None:
    """The file's bytes (one more than an image: a file that grew shows it), or None when it cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH)  # a consistent image, not a half-written one
        try:
            return os.pread(fd, layout.FILE_SIZE + 1, 0)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    except OSError:
        return b""  # there, but unreadable: damage to a reader that knew it, nothing to one that did not
    finally:
        os.close(fd)


def read_claim(directory: str | os.PathLike[str], name: str) -> dict | None:
    """The claim on breaker `name` ({"models", "settings"}), or None."""
    image = _read_once_image(SharedFileStore(directory).path_for(name))
    return layout.decode_claim(image) if image is not None and layout.is_valid(image) else None


def _reset_locks_in_child() -> None:
    # A fork taken while another thread held one of these locks would leave
    # it locked forever in the child.
    global _open_files_lock
    _open_files_lock = threading.Lock()
    for breaker_file in _open_files.values():
        breaker_file._thread_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_locks_in_child)
