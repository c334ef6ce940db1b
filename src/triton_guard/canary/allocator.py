"""The model's own view of its GPU memory: torch's CUDA caching allocator.

The incident's mechanism was fragmentation: torch's allocator reserves device
memory in blocks and hands out pieces of them; when the pieces no longer fit,
it asks CUDA for more, fails, empties its cache and retries (an "allocation
retry"), then finally raises out-of-memory, while NVML's "free" may still
look fine. Only the process that runs the model can see this
(torch.cuda.memory_stats): allocated bytes, reserved bytes, the gap between
them (reserved but unallocated: fragmentation and cache), allocation retries
and OOMs.

* `AllocatorReporter` runs inside a model's process (one call in a GPU
  instance's `initialize`: `start_reporter`) and writes one small JSON
  document per instance into the server's state directory every interval,
  from a thread of its own (never on the request path; it never creates a
  CUDA context).
* `read_allocator_states` is the canary's side: the readings of every
  instance, stale ones (a reporter that stopped) left out. The canary trends
  the gap, counts retries and OOMs (triton_guard.canary.leak) and publishes
  them (triton_guard.metrics: INSTANCE_MEMORY_BYTES, ALLOCATOR_*).

No Triton import; unit-tested with a fake shaped like torch.cuda's API.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

from triton_guard import defaults
from triton_guard.guard.state_dir import read_json_state, write_json_state
from triton_guard.periodic import Periodic

STATE_PREFIX = "allocator-"
STATE_SUFFIX = ".json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

# torch.cuda.memory_stats() keys (torch/cuda/memory.py documents them).
ALLOCATED = "allocated_bytes.all.current"
RESERVED = "reserved_bytes.all.current"
RETRIES = "num_alloc_retries"
OOMS = "num_ooms"


@dataclass(frozen=True)
class AllocatorReading:
    model: str
    instance: str
    pid: int
    device: str  # "gpu<index>" as the model sees it (CUDA's index)
    allocated_bytes: int
    reserved_bytes: int
    alloc_retries: int
    ooms: int
    at: float  # CLOCK_MONOTONIC (time.monotonic()), one clock for every process of the host

    @property
    def gap_bytes(self) -> int:
        """Reserved but not allocated: held by the allocator, usable only by requests that fit its blocks."""
        return max(self.reserved_bytes - self.allocated_bytes, 0)


def read_allocator(stats: Mapping[str, Any]) -> tuple[int, int, int, int] | None:
    """(allocated, reserved, retries, ooms) from torch.cuda.memory_stats(); None if it is empty (no CUDA yet)."""
    if not stats or ALLOCATED not in stats or RESERVED not in stats:
        return None
    return int(stats[ALLOCATED]), int(stats[RESERVED]), int(stats.get(RETRIES, 0)), int(stats.get(OOMS, 0))


def torch_memory_stats(device_index: int) -> dict[str, Any]:
    """torch.cuda.memory_stats(device) if this process has torch with CUDA started, else {} (never starts it)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return {}
    return torch.cuda.memory_stats(device_index)


def state_filename(instance: str) -> str:
    stem = _UNSAFE.sub("_", instance)[:100]
    if stem != instance:
        stem += "-" + hashlib.sha256(instance.encode()).hexdigest()[:12]
    return STATE_PREFIX + stem + STATE_SUFFIX


class AllocatorReporter:
    """Writes this instance's allocator reading into the state directory every `interval_s`."""

    def __init__(
        self,
        model: str,
        instance: str,
        device_index: int,
        state_dir: str,
        memory_stats: Callable[[int], Mapping[str, Any]] = torch_memory_stats,
        interval_s: float = defaults.CANARY_SAMPLE_INTERVAL_MS / 1000,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    ) -> None:
        self.model = model
        self.instance = instance
        self.device_index = device_index
        self.state_dir = state_dir
        self.memory_stats = memory_stats
        self.interval_s = interval_s
        self.clock = clock
        self.log = log
        # A failure is logged once (until it changes), never raised: a full tmpfs, a CUDA error.
        self._rounds = Periodic(f"allocator reporter '{instance}'", interval_s, self.report_once, report=log,
                                repeat_reports=False)

    def report_once(self) -> AllocatorReading | None:
        values = read_allocator(self.memory_stats(self.device_index))
        if values is None:
            return None
        reading = AllocatorReading(self.model, self.instance, os.getpid(), f"gpu{self.device_index}", *values, self.clock())
        write_json_state(self.state_dir, state_filename(self.instance), asdict(reading))
        return reading

    def start(self) -> "AllocatorReporter":
        self._rounds.start()
        return self

    def step(self) -> None:
        """One report, as the thread makes it: a failure is logged once (until it changes), never raised."""
        self._rounds.round()

    def close(self) -> None:
        self._rounds.stop(join_s=5 * self.interval_s + 1)
        try:
            os.unlink(os.path.join(self.state_dir, state_filename(self.instance)))
        except OSError:
            pass


def start_reporter(args: Mapping[str, Any], state_dir: str, **kwargs) -> AllocatorReporter | None:
    """A started reporter for a GPU instance (Triton's initialize `args`); None for a CPU instance.

    One line in a model's initialize: `self.allocator = start_reporter(args, state_dir)`,
    and `self.allocator.close()` in finalize.
    """
    if args.get("model_instance_kind") != "GPU":
        return None
    model = json.loads(args["model_config"])["name"]
    device = int(args.get("model_instance_device_id") or 0)
    return AllocatorReporter(model, args["model_instance_name"], device, state_dir, **kwargs).start()


def read_allocator_states(state_dir: str, now: float, stale_s: float) -> list[AllocatorReading]:
    """Every instance's latest reading in `state_dir`, newer than `stale_s` (a stopped reporter's is left out)."""
    try:
        names = sorted(e.name for e in os.scandir(state_dir)
                       if e.name.startswith(STATE_PREFIX) and e.name.endswith(STATE_SUFFIX))
    except OSError:
        return []
    readings = []
    for name in names:
        document = read_json_state(state_dir, name)
        try:
            reading = AllocatorReading(**document)  # type: ignore[arg-type]
        except TypeError:
            continue  # unreadable, or from another version: skip it
        if now - reading.at <= stale_s:
            readings.append(reading)
    return readings
