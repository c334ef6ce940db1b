"""Which guard models run a breaker now: a lock each of their processes holds for as long as it lives.

A breaker's claim (shared_state.py) names every guard model that ever took
it; a claim outlives its model (unguarded, replaced by another placement on a
running server, a load that failed). Every guard process, whatever its
placement, holds a shared `flock` on one file per (breaker, model) in the
state directory from its load on; the kernel lets go of it when the process
ends, however it ends. A file that nobody holds means no process of that
model runs a guard of that breaker any more: its claim must not block a new
guard with other settings, and an OPEN breaker it left must not hold the pod
out of service (nothing would ever call or probe it again). No file says
nothing (a state directory removed under live guards): the claim counts.
"""

from __future__ import annotations

import fcntl
import hashlib
import os


def _path(directory: str | os.PathLike[str], breaker: str, model: str) -> str:
    digest = hashlib.sha256(f"{breaker}\0{model}".encode()).hexdigest()[:24]
    return os.path.join(directory, f"holder-{digest}.lock")


class Holding:
    """This process runs a guard of `breaker` as part of `model`, until `release` or its end."""

    def __init__(self, directory: str | os.PathLike[str], breaker: str, model: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self._fd: int | None = os.open(_path(directory, breaker, model), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_SH)  # shared: every instance of the model holds it at once

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing lets go of the lock
            self._fd = None


def is_held(directory: str | os.PathLike[str], breaker: str, model: str) -> bool | None:
    """Whether some live process runs a guard of `breaker` as part of `model`; None when nothing says (no
    file: the state directory was removed or rebuilt since, and a live holder's lock went with its file)."""
    try:
        fd = os.open(_path(directory, breaker, model), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's own lock when it got one
    return False
