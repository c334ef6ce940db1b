"""The /proc scans that tell which processes of a server are alive.

scan_stubs lists each Python backend stub of a tritonserver (pid, model,
instance; the canary's per-instance memory uses it too), stub_pids maps
their instance names to pids;
group_alive and wait_group_gone follow a process group until it is gone;
mentioned_in_live_processes tells which strings (shm prefixes) a live
process's command line still carries.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
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


STUB_BINARY = b"triton_python_backend_stub"
# <model>_<group>_<index>, or <group name>_<index>: how Triton names an instance.
INSTANCE_NAME = re.compile(r"^[\w.-]+_\d+(_\d+)?$")


@dataclass(frozen=True)
class StubProcess:
    pid: int
    model: str
    instance: str


def instance_index(instance: str) -> int | None:
    """The N of <model>_<group>_N (the instance's index within its group), or None for another name."""
    if not INSTANCE_NAME.match(instance):
        return None
    return int(instance.rsplit("_", 1)[1])


def parse_stub_argv(argv: list[bytes]) -> tuple[str, str] | None:
    """(model, instance) from a Python stub's argv, or None if it is not one.

    python_backend starts the stub with the model's file
    (<repository>/<model>/<version>/model.py) and the instance's name
    (e.g. classifier_guard_0_1) among its arguments.
    """
    if not argv or not argv[0].endswith(STUB_BINARY):
        return None
    names = [a for a in (arg.decode(errors="replace") for arg in argv[1:]) if INSTANCE_NAME.match(a)]
    if not names:
        return None
    instance = names[0]
    # The model's directory is its name.
    parts = Path(argv[1].decode(errors="replace")).parts if len(argv) > 1 else ()
    model = parts[-3] if len(parts) >= 3 else re.sub(r"_\d+(_\d+)?$", "", instance)
    return model, instance


def scan_stubs(server_pid: int, proc: Path = Path("/proc")) -> list[StubProcess]:
    """Every Python backend stub whose parent is `server_pid` (python_backend forks them)."""
    try:
        entries = [e.name for e in os.scandir(proc) if e.name.isdigit()]
    except OSError:
        return []
    stubs = []
    for pid in entries:
        try:
            # The comm field may hold spaces and parentheses: the fields after the last ')' are fixed.
            if int((proc / pid / "stat").read_text().rsplit(")", 1)[1].split()[1]) != server_pid:
                continue
            found = parse_stub_argv((proc / pid / "cmdline").read_bytes().split(b"\0"))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if found is not None:
            stubs.append(StubProcess(int(pid), *found))
    return sorted(stubs, key=lambda s: (s.model, s.instance, s.pid))


def stub_pids(server_pid: int) -> dict[str, int]:
    """{instance name: pid} of every Python backend stub of one tritonserver."""
    return {stub.instance: stub.pid for stub in scan_stubs(server_pid)}


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

