"""Where breaker records live.

MemoryStore      one process: a dict behind a threading.Lock (unit tests,
                 single-process use).
SharedFileStore  one server: one small mmap'ed file per breaker in a directory
                 shared by every guard stub process of a tritonserver (and
                 readable by the canary model, tests and a status command).

A transaction hands out a *copy* of the record and writes it back only when
the block ends without an exception, so a half-done update never lands.

File layout (little-endian, FILE_SIZE = 2432 bytes with WINDOW_SIZE_MAX=1024):

  off  size  field
    0     4  magic b"TGBR"
    4     2  layout version (u16)           other version -> a new breaker
    6     2  name length in bytes (u16)
    8     4  ring capacity (u32)
   12     4  CRC-32 of bytes 16..end (u32)
   16   256  breaker name, UTF-8, zero padded
  272   112  record body, see _BODY_FIELDS (6 x u64, 3 x f64, 9 x u32, 4 pad)
  384  1024  window ring, one byte per call (bit 0 failed, bit 1 slow)
 1408     8  settings fingerprint (u64; 0: no guard claimed the breaker yet)
 1416  1016  the claim: JSON {"models": [guard models], "settings": {...}}, zero padded

The file is read and written with pread/pwrite, never mmap'ed: a file
truncated under a mapping would kill the process with SIGBUS.

Damage. Every transaction checks, under the lock, that the path still names
the file this process has open, so a deleted or replaced file (or a removed
directory) is followed at once and every guard converges on the file now at
the path. A file that is truncated, corrupt (CRC), or found empty by a
process that had seen it before is rebuilt from this process's last good
copy, by one rule: a damaged record is never taken to mean CLOSED. A copy
that was OPEN (or HALF_OPEN) is restored as it was; a copy that was CLOSED,
or no copy at all, resumes as HALF_OPEN, so one trial call decides and a
hung upstream is not handed all traffic again. A file that cannot be opened
or written (read-only, immutable, directory gone and not creatable) leaves
the process on its own copy in memory, retried every DAMAGE_RETRY_S. Each
event is reported once (`report`, stderr by default) and counted in
`SharedFileStore.damage` for a metric.

Claims. The guard models of one upstream share its breaker, so they must
share its settings: `claim()` stamps the breaker with the guard's model name,
its breaker settings and their fingerprint; a guard with other settings gets
SettingsConflict, naming the models that claimed it and every differing
setting (instead of one guard resetting the other's window). A model that is
the breaker's only claimer may change its settings (a reload).

Locking: `fcntl.lockf` on the whole file for the length of one transaction
(microseconds; never across an upstream call). The kernel drops the lock when
its process dies, so a killed stub cannot wedge the others. POSIX locks are
per process, so a per-file threading.Lock serialises threads of one process,
and every store in a process shares one open handle per file (closing a
second descriptor of the file would silently drop the process's lock).
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import hashlib
import json
import operator
import os
import re
import struct
import sys
import tempfile
import threading
import time
import zlib
from types import TracebackType
from typing import Callable, Mapping

from triton_guard import defaults
from triton_guard.errors import SettingsConflict
from triton_guard.guard.breaker import BreakerRecord, State
from triton_guard.guard.config import ConfigError, GuardConfig

MAGIC = b"TGBR"
LAYOUT_VERSION = 2
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
_CLAIM_OFFSET = _RING_OFFSET + RING_CAPACITY  # 1408
CLAIM_SIZE = 1024  # fingerprint (u64) + the claim's JSON
_FINGERPRINT = struct.Struct("<Q")
FILE_SIZE = _CLAIM_OFFSET + CLAIM_SIZE
DAMAGE_RETRY_S = 1.0  # an unusable breaker file is tried again this often
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
        self._claims: dict[str, dict] = {}
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

    def claim(self, name: str, model: str, settings: Mapping[str, object]) -> None:
        """See SharedFileStore.claim."""
        with self._lock:
            problem = _conflict(name, model, settings, self._claims.get(name))
            if problem:
                raise SettingsConflict(problem)
            self._claims[name] = _merged_claim(self._claims.get(name), model, settings)


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


# --- settings claims ---------------------------------------------------------------------

# A bulkhead is per guard instance: guards of one upstream may size theirs differently.
PER_INSTANCE_SETTINGS = frozenset({"max_inflight"})


def breaker_settings(config: GuardConfig) -> dict[str, int | float]:
    """The settings every guard of one upstream must agree on."""
    return {k: v for k, v in config.to_dict().items() if k not in PER_INSTANCE_SETTINGS}


def settings_fingerprint(settings: Mapping[str, object]) -> int:
    digest = hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "little") or 1  # 0 means "not claimed"


def _merged_claim(claim: dict | None, model: str, settings: Mapping[str, object]) -> dict:
    """The claim once `model` joined it with `settings` (checked by _conflict first)."""
    models = [] if claim is None or claim.get("settings") != dict(settings) else list(claim.get("models", []))
    return {"models": sorted({*models, model}), "settings": dict(settings)}


def _encode_claim(claim: dict) -> bytes:
    doc = json.dumps(claim, sort_keys=True, separators=(",", ":")).encode()
    if len(doc) > CLAIM_SIZE - _FINGERPRINT.size:
        raise ConfigError(f"too many guard models ({', '.join(claim['models'])}) for one breaker's claim")
    return _FINGERPRINT.pack(settings_fingerprint(claim["settings"])) + doc.ljust(CLAIM_SIZE - _FINGERPRINT.size, b"\0")


def _decode_claim(region: bytes) -> dict | None:
    if _FINGERPRINT.unpack_from(region)[0] == 0:
        return None
    try:
        return json.loads(region[_FINGERPRINT.size :].rstrip(b"\0"))
    except ValueError:
        return None


def _conflict(name: str, model: str, settings: Mapping[str, object], claim: dict | None) -> str | None:
    """Why `model` may not share breaker `name` with `settings`, or None."""
    if claim is None:
        return None
    theirs = claim.get("settings") or {}
    others = [m for m in claim.get("models", []) if m != model]
    if not others:  # unclaimed, or only this model (a reload with new settings)
        return None
    differing = [
        f"{key}={settings.get(key)!r} here, {theirs.get(key)!r} there"
        for key in sorted(set(settings) | set(theirs))
        if settings.get(key) != theirs.get(key)
    ]
    if not differing:
        return None
    return (
        f"guard model '{model}' and guard model(s) {', '.join(repr(m) for m in others)} share the breaker of "
        f"upstream '{name}' but their settings differ: {'; '.join(differing)}. "
        "Give every guard of one upstream the same breaker settings"
    )


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
    ) -> None:
        # The directory is created on the first transaction, not here, so
        # that a read-only user (status command) leaves no trace.
        self.directory = os.path.abspath(os.fspath(directory))
        self._clock = clock
        self._report = report
        self.damage: collections.Counter[str] = collections.Counter()
        self._files: dict[str, _BreakerFile] = {}

    def path_for(self, name: str) -> str:
        return os.path.join(self.directory, breaker_filename(name))

    def transaction(self, name: str) -> _BreakerFile:
        breaker_file = self._files.get(name)
        if breaker_file is None:
            breaker_file = self._files[name] = _open_breaker_file(self.path_for(name), name, self)
        return breaker_file

    def claim(self, name: str, model: str, settings: Mapping[str, object]) -> None:
        """Stamp breaker `name` as run by guard `model` with `settings` (breaker_settings()).

        Raises SettingsConflict when a guard of another model claimed it
        with other settings.
        """
        self.transaction(name).claim(model, settings)

    def read(self, name: str) -> BreakerRecord | None:
        """The record as last written; None if absent or unreadable. Never creates or repairs."""
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


def _open_breaker_file(path: str, name: str, store: SharedFileStore) -> _BreakerFile:
    with _open_files_lock:
        breaker_file = _open_files.get(path)
        if breaker_file is None:
            breaker_file = _open_files[path] = _BreakerFile(path, name, store)
        return breaker_file


class _BreakerFile:
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
        self._header_prefix = _initial_image(name)[:_CRC_OFFSET]  # all but the CRC
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._locked = False
        self._good: bytes | None = None  # the last valid image this process read or wrote
        self._claim: bytes | None = None  # this process's claim, restamped on a rebuilt file
        self._unusable_until = 0.0  # while the clock is below it, records stay in memory
        self._image: bytearray | None = None
        self._rec: BreakerRecord | None = None

    # --- transactions ----------------------------------------------------------

    def __enter__(self) -> BreakerRecord:
        self._thread_lock.acquire()
        try:
            self._image = self._begin()
            self._rec = _record_of(self._image)
        except BaseException:
            self._end()
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
            self._end()

    def claim(self, model: str, settings: Mapping[str, object]) -> None:
        with self._thread_lock:
            try:
                image = self._begin()
                current = _decode_claim(image[_CLAIM_OFFSET:])
                problem = _conflict(self.name, model, settings, current)
                if problem:
                    raise SettingsConflict(problem)
                region = _encode_claim(_merged_claim(current, model, settings))
                self._claim = region
                if bytes(image[_CLAIM_OFFSET:]) != region:
                    image[_CLAIM_OFFSET:] = region
                    _pack_record(image, _record_of(image))
                    self._write(image)
            finally:
                self._unlock()

    def read(self) -> BreakerRecord | None:
        with self._thread_lock:
            image = _read_once_image(self.path)
            if image is not None and self._valid(image):
                return _record_of(image)
            # Damaged or unusable: what this process last knew (it repairs on its next call).
            return _record_of(self._good) if self._good is not None else None

    # --- the file ----------------------------------------------------------------

    def _begin(self) -> bytearray:
        """Lock the file and return a valid image of it, repairing damage; or the copy in memory."""
        now = self._store._clock()
        if self._fd is None and now < self._unusable_until:
            return self._memory_image(now)
        try:
            moved = self._follow_path()
            image = os.pread(self._fd, FILE_SIZE, 0)
            if self._valid(image):
                if self._unusable_until:
                    self._unusable_until = 0.0
                    self._store._report(f"breaker '{self.name}': state file {self.path} usable again")
                    if _record_of(image).state == int(State.CLOSED) and _record_of(self._good).state != int(State.CLOSED):
                        # The file is older than what this process lived on meanwhile: not a reason to close.
                        image = self._good
                        os.pwrite(self._fd, image, 0)
                elif moved and _record_of(image).transitions < _record_of(self._good).transitions:
                    # A breaker begun afresh at the path by a process that never saw the old one
                    # (the old file was deleted): the record that saw more transitions wins.
                    image = self._good
                    os.pwrite(self._fd, image, 0)
                    self._damaged("replaced", f"state file {self.path} was replaced; the breaker that saw more transitions restored")
                self._good = image
                return bytearray(image)
            kind = self._damage_kind(image, moved)
            repaired = self._rebuilt(now, fresh=kind is None)
            os.pwrite(self._fd, repaired, 0)
            if len(image) > FILE_SIZE:
                os.ftruncate(self._fd, FILE_SIZE)
            if kind is not None:
                self._damaged(kind, f"state file {self.path} was {kind}; rebuilt as {_state_name(repaired)}")
            self._good = bytes(repaired)
            return repaired
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
            # Deleted, replaced, or its directory removed: follow the path.
            self._unlock()
            self._close()
            moved = self._good is not None
        raise OSError(f"{self.path} keeps being replaced")

    def _damage_kind(self, image: bytes, moved: bool) -> str | None:
        """What happened to an invalid file; None: a new breaker, not damage."""
        if not image:
            if self._good is None:
                return None  # created just now (by this process or a peer)
            return "missing" if moved else "truncated"
        if len(image) >= 6 and image[:4] == MAGIC and image[4:6] != self._header_prefix[4:6]:
            return None  # another layout version: a new breaker
        if moved:
            return "replaced"
        return "truncated" if len(image) != FILE_SIZE else "corrupt"

    def _rebuilt(self, now: float, fresh: bool) -> bytearray:
        """A valid image: a new breaker, or the last good copy by the rule in the module docstring."""
        if fresh or self._good is None:
            rec = BreakerRecord()
        else:
            rec = _record_of(self._good)
        if not fresh and rec.state == int(State.CLOSED):
            rec.state = int(State.HALF_OPEN)
            rec.since = now
            rec.generation += 1  # permits issued before the damage become stale
            rec.transitions += 1
            rec.trials_issued = rec.trials_succeeded = 0
            rec.last_trial_at = 0.0
        claim = self._claim or (self._good[_CLAIM_OFFSET:] if self._good else bytes(CLAIM_SIZE))
        image = bytearray(_initial_image(self.name))
        image[_CLAIM_OFFSET:] = claim
        _pack_record(image, rec)
        return image

    def _memory_image(self, now: float) -> bytearray:
        if self._good is None:
            self._good = bytes(self._rebuilt(now, fresh=False))
        return bytearray(self._good)

    def _save(self, rec: BreakerRecord) -> None:
        image = self._image
        if len(rec.ring) != RING_CAPACITY:
            raise ValueError(f"window ring of {len(rec.ring)} bytes, expected {RING_CAPACITY}")
        _pack_record(image, rec)
        self._write(image)

    def _write(self, image: bytearray) -> None:
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

    def _valid(self, image: bytes) -> bool:
        return (
            len(image) == FILE_SIZE
            and image[:_CRC_OFFSET] == self._header_prefix
            and _CRC.unpack_from(image, _CRC_OFFSET)[0] == zlib.crc32(memoryview(image)[_NAME_OFFSET:])
        )

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
        self._rec = self._image = None
        try:
            self._unlock()
        finally:
            self._thread_lock.release()


def _pack_record(image: bytearray, rec: BreakerRecord) -> None:
    # The CRC goes last, so a process killed mid-write leaves a mismatch.
    image[_RING_OFFSET:_CLAIM_OFFSET] = rec.ring
    _BODY.pack_into(image, _BODY_OFFSET, *_body_values(rec))
    _CRC.pack_into(image, _CRC_OFFSET, zlib.crc32(memoryview(image)[_NAME_OFFSET:]))


def _record_of(image: bytes) -> BreakerRecord:
    return BreakerRecord(*_BODY.unpack_from(image, _BODY_OFFSET), bytearray(image[_RING_OFFSET:_CLAIM_OFFSET]))


def _state_name(image: bytes) -> str:
    return State(_record_of(image).state).name


def _read_once_image(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size != FILE_SIZE:
            return None
        fcntl.lockf(fd, fcntl.LOCK_SH)  # a consistent image, not a half-written one
        try:
            return os.pread(fd, FILE_SIZE, 0)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_once(path: str) -> BreakerRecord | None:
    image = _read_once_image(path)
    return _decode(image) if image is not None else None


def read_claim(directory: str | os.PathLike[str], name: str) -> dict | None:
    """The claim on breaker `name` ({"models", "settings"}), or None."""
    image = _read_once_image(SharedFileStore(directory).path_for(name))
    return _decode_claim(image[_CLAIM_OFFSET:]) if image is not None and _is_valid(image) else None


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
    return _record_of(image)


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
