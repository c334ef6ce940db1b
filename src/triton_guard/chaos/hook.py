"""The in-model side of fault injection: `ChaosHook` and what it needs.

- `ChaosHook`: used inside a target model's `execute`; applies the fault the
  control file (chaos/protocol.py) holds. Its watcher thread grows (and on
  clear releases) the `Leak`, made with `allocate_host` by default.
- `perturbed_weights`: the weights a DRIFT fault answers from.
- `hook_from_environment`: a started hook only in chaos mode, else None: a
  target model then pays one `is not None` check per execute, nothing else.

No Triton import: unit-tested without a server. The demo's classifier
(model_repository/classifier/1/model.py) only translates.
"""

from __future__ import annotations

import mmap
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from triton_guard import defaults
from triton_guard.chaos.protocol import ChaosControl, Fault, FaultKind
from triton_guard.periodic import Periodic
from triton_guard.server.processes import instance_index, parse_stub_argv

MB = 1 << 20
# Leak chunks smaller than this wait for the next step (no 4 KB mappings).
LEAK_MIN_CHUNK_BYTES = 64 << 10


def allocate_host(nbytes: int) -> np.ndarray:
    """`nbytes` of touched host memory in a mapping of its own.

    An anonymous mmap, not np.ones: after glibc frees one large chunk it
    raises its mmap threshold and serves the next ones from a heap, which a
    non-main thread's arena keeps after free, so RSS would not drop on clear
    (measured). The array's base is the mapping: dropping it unmaps.
    """
    chunk = np.frombuffer(mmap.mmap(-1, nbytes), dtype=np.uint8)
    chunk.fill(1)  # touch every page: resident memory really grows
    return chunk


class Leak:
    """Memory held on purpose: `rate` bytes per second since `started_at`, up to the cap."""

    def __init__(self, fault: Fault, allocate: Callable[[int], Any], started_at: float) -> None:
        self.fault = fault
        self._allocate = allocate
        self._started_at = started_at
        self._rate = fault.leak_mb_per_s * MB
        self._cap = int(fault.leak_cap_mb * MB)
        self._chunks: list[Any] = []
        self.held_bytes = 0

    def grow(self, now: float) -> int:
        """Allocate what is due by `now`; returns the bytes held."""
        target = min(self._cap, round(self._rate * max(0.0, now - self._started_at)))
        due = target - self.held_bytes
        if due >= LEAK_MIN_CHUNK_BYTES or (due > 0 and target == self._cap):
            self._chunks.append(self._allocate(due))
            self.held_bytes = target
        return self.held_bytes

    def release(self) -> None:
        self._chunks.clear()
        self.held_bytes = 0


@dataclass
class ChaosHook:
    """A target model's side of fault injection (one per model instance).

    `before()` at the start of execute: blocks on hang, sleeps on slow, and
    returns the active fault (None: none). The model answers an ERROR fault
    with `error_message`, runs DRIFT on `perturbed_weights`, and passes its
    outputs through `after_outputs`. `start()` runs the watcher thread that
    grows and releases the leak, whether requests come or not.
    `allocate(nbytes)` makes leaked memory (host by default; a GPU instance
    passes a device allocator), `release()` runs after a leak is dropped
    (a GPU instance empties torch's cache there). `instance` is this
    instance's index (the N of <model>_<group>_N): a leak aimed at another
    index (Fault.instance) leaves it alone; None: it takes only leaks aimed
    at every instance.
    """

    control: ChaosControl
    model_name: str
    instance: int | None = None
    allocate: Callable[[int], Any] = allocate_host
    release: Callable[[], None] | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    hang_poll_s: float = defaults.CHAOS_HANG_POLL_S
    watch_s: float = defaults.CHAOS_WATCH_S

    _leak: Leak | None = field(default=None, init=False)
    _watcher: Periodic | None = field(default=None, init=False)

    @property
    def error_message(self) -> str:
        return f"chaos: injected error in model '{self.model_name}'"

    def before(self) -> Fault | None:
        fault = self.control.read(self.model_name)
        while fault is not None and fault.kind is FaultKind.HANG:
            self.sleep(self.hang_poll_s)
            fault = self.control.read(self.model_name)
        if fault is not None and fault.kind is FaultKind.SLOW:
            self.sleep(fault.slow_ms / 1000)
        return fault

    def after_outputs(self, fault: Fault | None, outputs: np.ndarray) -> np.ndarray:
        if fault is not None and fault.kind is FaultKind.NAN and np.issubdtype(outputs.dtype, np.floating):
            return np.full_like(outputs, np.nan)
        return outputs

    @property
    def leaked_bytes(self) -> int:
        leak = self._leak
        return leak.held_bytes if leak is not None else 0

    def sync(self) -> None:
        """One watcher step: start, grow or release the leak to match the control file."""
        fault = self.control.read(self.model_name)
        if fault is not None and fault.kind is FaultKind.LEAK and fault.instance in (None, self.instance):
            if self._leak is None or self._leak.fault != fault:
                self._drop_leak()  # a new leak (other parameters, or re-injected) starts from zero
                self._leak = Leak(fault, self.allocate, self.clock())
            self._leak.grow(self.clock())
        elif self._leak is not None:
            self._drop_leak()

    def _drop_leak(self) -> None:
        if self._leak is None:
            return
        self._leak.release()
        self._leak = None
        if self.release is not None:
            self.release()

    def start(self) -> "ChaosHook":
        # A failed step (e.g. out of memory) keeps what is held and tries again next step; said once per failure.
        self._watcher = Periodic(f"chaos: model '{self.model_name}'", self.watch_s, self.sync,
                                 report=lambda message: print(message, file=sys.stderr, flush=True),
                                 repeat_reports=False)
        self._watcher.start()
        return self

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop(join_s=5 * self.watch_s + 1)
        self._drop_leak()


def perturbed_weights(
    weights: Mapping[str, np.ndarray], scale: float, seed: int
) -> dict[str, np.ndarray]:
    """Each tensor plus Gaussian noise with std = scale x the tensor's std.

    Relative to each tensor so a bias and a weight matrix drift alike;
    tensors are visited in name order so a seed always gives the same result.
    """
    rng = np.random.default_rng(seed)
    result = {}
    for name in sorted(weights):
        values = np.asarray(weights[name])
        noise = rng.standard_normal(values.shape) * (scale * float(values.std()))
        result[name] = (values + noise).astype(values.dtype)
    return result


def hook_from_environment(
    model_name: str,
    allocate: Callable[[int], Any] | None = None,
    release: Callable[[], None] | None = None,
    environ: Mapping[str, str] | None = None,
    instance_name: str | None = None,
) -> ChaosHook | None:
    """A started hook when the server runs with --chaos, else None.

    `instance_name` (Triton's, e.g. classifier_0_1; args["model_instance_name"])
    says which instance this is, for a leak aimed at one; by default it is read
    from this stub's own command line.
    """
    directory = (os.environ if environ is None else environ).get(defaults.CHAOS_DIR_ENV)
    if not directory:
        return None
    control = ChaosControl(directory)
    control.register(model_name)
    name = instance_name if instance_name is not None else own_instance_name()
    index = instance_index(name) if name else None
    return ChaosHook(control, model_name, index, allocate=allocate or allocate_host, release=release).start()


def own_instance_name(cmdline: Path = Path("/proc/self/cmdline")) -> str | None:
    """This Python stub's instance name, from its command line (None outside a stub)."""
    try:
        found = parse_stub_argv(cmdline.read_bytes().split(b"\0"))
    except OSError:
        return None
    return found[1] if found else None
