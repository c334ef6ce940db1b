"""What the leak trend keeps between canary runs, and what it does about a leak.

`MemoryWatch` gathers, at every sample of the canary's sampler, the memory
reading the headroom check uses, the per-instance rows
(triton_guard.canary.instances: /proc, and NVML on a GPU host) and the
allocator readings models on GPU instances report
(triton_guard.canary.allocator), into one `LeakWatch`
(triton_guard.canary.leak). A run asks it for a `LeakAssessment`; the
server's own runs (not a probe's one-off thresholds) may act on it: with
`leak_reload` on, the blamed model is reloaded (triton_guard.canary.leak_reload)
and the assessment says which models are held not ready meanwhile.

No Triton import: the canary runner (canary/runner.py) owns one; its parts
are injected, so unit tests pass fakes.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Callable

from triton_guard import defaults
from triton_guard.canary.allocator import read_allocator_states
from triton_guard.canary.config import CanaryConfig
from triton_guard.canary.instances import InstanceSampler
from triton_guard.canary.leak import LeakAssessment, LeakWatch
from triton_guard.canary.leak_reload import LeakReloader, Reload
from triton_guard.canary.memory import MemoryReading


class MemoryWatch:
    def __init__(
        self,
        config: CanaryConfig,
        clock: Callable[[], float],
        log: Callable[[str], None],
        instances: InstanceSampler | None = None,
        allocator_dir: str | None = None,
        reload: Reload | None = None,
    ) -> None:
        self.leak = LeakWatch(config.trend_window_s)
        self.instances = instances
        self.allocator_dir = allocator_dir
        self.reloader = LeakReloader(reload, config.leak_reload_cooldown_s, clock, log) if reload else None
        self._lock = threading.Lock()  # the sampler feeds, runs judge: two threads

    def __len__(self) -> int:
        return len(self.leak.total)

    def sample(self, now: float, reading: MemoryReading, device_class: str) -> None:
        rows = self.instances.sample(now, gpu=device_class == "gpu") if self.instances is not None else None
        allocators = (read_allocator_states(self.allocator_dir, now, defaults.ALLOCATOR_STALE_S)
                      if self.allocator_dir else ())
        with self._lock:
            self.leak.observe(now, reading, rows, allocators)

    def assess(self, config: CanaryConfig, reading: MemoryReading, floor: int, act: bool) -> LeakAssessment:
        """The leak trend now; `act`: the server's own run, which may start a reload (config.leak_reload)."""
        with self._lock:
            found = self.leak.assess(reading, floor, config.trend_horizon_s, config.trend_min_span_s,
                                     config.trend_min_samples)
        note = self.instances.note if self.instances is not None else None
        if self.reloader is None:
            return dataclasses.replace(found, note=note)
        rows = [v.row for v in found.instances]
        if act and config.leak_reload:
            self.reloader.consider(found.blamed, rows, found.reading.source)
        return dataclasses.replace(found, held=self.reloader.holding(rows), reloads=dict(self.reloader.counts), note=note)
