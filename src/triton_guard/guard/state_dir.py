"""Where a server's guards keep their shared state: the directory, the breaker file names, small JSON documents.

One directory per tritonserver (/dev/shm/triton-guard-<server pid>, or
$TRITON_GUARD_STATE_DIR): the breakers (shared_state.py), the recovery probe
and healer locks and stamps, the drift monitor's windows and scores.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile

from triton_guard import defaults
from triton_guard.guard.state_file import name_bytes

FILE_SUFFIX = ".breaker"


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
_STEM_MAX = 100  # keeps <stem>-<hash>.breaker well under the NAME_MAX of filesystems


def breaker_filename(name: str) -> str:
    """A filename for a breaker name; altered names get a hash so they stay unique."""
    encoded = name_bytes(name)
    stem = _UNSAFE_CHARS.sub("_", name)[:_STEM_MAX]
    if stem != name:
        stem += "-" + hashlib.sha256(encoded).hexdigest()[:12]
    return stem + FILE_SUFFIX


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
