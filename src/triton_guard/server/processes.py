"""The /proc scans that tell which processes of a server are alive.

stub_pids maps each Python backend stub of a tritonserver to its pid;
group_alive and wait_group_gone follow a process group until it is gone;
mentioned_in_live_processes tells which strings (shm prefixes) a live
process's command line still carries.
"""

from __future__ import annotations

import re
import time
from pathlib import Path


def mentioned_in_live_processes(needles: set[str]) -> set[str]:
    """Which of `needles` appear in the command line of a live process (tritonserver, its stubs)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            found.update(n for n in needles if n in argv)
    return found


_STUB_BINARY = b"triton_python_backend_stub"
_INSTANCE_NAME = re.compile(rb"^[\w.-]+_\d+(_\d+)?$")  # <model>_<group>_<n>, or <model>_<n>


def stub_pids(server_pid: int) -> dict[str, int]:
    """{instance name: pid} of every Python backend stub of one tritonserver.

    The stub's argv carries its instance name (e.g. classifier_guard_0_1);
    its parent is the server (python_backend forks it).
    """
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent != server_pid or not argv[0].endswith(_STUB_BINARY):
            continue
        names = [arg.decode() for arg in argv[1:] if _INSTANCE_NAME.match(arg)]
        if names:
            stubs[names[0]] = int(entry.name)
    return stubs


def group_alive(pgid: int) -> bool:
    """A process of the group still runs (zombies excluded: they hold nothing but a pid)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def wait_group_gone(pgid: int, timeout_s: float = 5.0) -> None:
    """Until no process of the group is left (SIGKILLed stubs take a moment to go)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and group_alive(pgid):
        time.sleep(0.05)

