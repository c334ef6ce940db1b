"""Cleanup of the Python backend's shared memory in /dev/shm.

Each server's segments carry its prefix (defaults.SHM_PREFIX, serve's pid and
its gRPC port). remove_shm removes one server's; remove_stale_shm removes
those of servers no live process mentions any more (a crash, a SIGKILL).
"""

from __future__ import annotations

import re
from pathlib import Path

from triton_guard import defaults
from triton_guard.server.processes import mentioned_in_live_processes

SHM_DIR = Path("/dev/shm")
_SHM_NAME = re.compile(rf"^({re.escape(defaults.SHM_PREFIX)}\d+_\d+_)")


def remove_shm(prefix: str, shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove the Python backend's shared-memory segments named `prefix`*; returns their names."""
    removed = []
    try:
        entries = list(shm_dir.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(prefix):
            try:
                entry.unlink()
                removed.append(entry.name)
            except OSError:
                pass
    return removed


def remove_stale_shm(shm_dir: Path = SHM_DIR) -> list[str]:
    """Segments of triton-guard servers no live process uses any more (crash, SIGKILL)."""
    try:
        prefixes = {m.group(1) for e in shm_dir.iterdir() if (m := _SHM_NAME.match(e.name))}
    except OSError:
        return []
    stale = prefixes - mentioned_in_live_processes(prefixes)
    return [name for prefix in sorted(stale) for name in remove_shm(prefix, shm_dir)]

