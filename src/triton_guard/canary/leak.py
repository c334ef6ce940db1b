"""The leak trend, per model instance and in total, and who is to blame.

`LeakWatch` keeps a growth series (triton_guard.canary.growth) for the
memory in use in total (host, cgroup or GPU, whichever the headroom check
reads) and for every model instance's memory of the same kind (resident
bytes, or device bytes on a GPU host), plus, where a model on a GPU
reports torch's allocator, the reserved-but-unallocated gap and the
allocation retries and OOMs. The canary's sampler feeds it; a run judges it:

* an instance is **blamed** when its growth counts as a leak (steady, not a
  warm-up, and already half of the room left: canary/growth.py) and, at its
  rate, free memory reaches the floor within the horizon;
* an instance whose allocator retried an allocation or ran out of memory
  within the last `sustain_s` is a **starvation risk**, whatever free
  memory says, and so is steady growth of its allocator's gap;
* the **total** fails the same way as an instance (steady fall, floor within
  the horizon), naming whoever grows steadily, or saying no instance does.

`check_leak_trend` turns that into the `leak_trend` check, e.g.
`classifier instance classifier_0_1 (pid 4242) +38 MB/min for 6 min, at this
rate the host floor in 11 min; 3 other instances flat`. MB here is 2**20
bytes, as in `triton-guard chaos leak`.

No Triton import; time is injected.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from triton_guard import defaults
from triton_guard.canary.allocator import AllocatorReading
from triton_guard.canary.growth import Growth, GrowthSeries
from triton_guard.canary.instances import InstanceMemory
from triton_guard.canary.memory import MemoryReading
from triton_guard.canary.report import CheckResult

MB = float(1 << 20)
MIN_RISE_BYTES = defaults.LEAK_MIN_RISE_MB * MB
CHECK = "leak_trend"


@dataclass
class _Tracked:
    """What is kept of one instance (one process: a reload starts a new one)."""

    row: InstanceMemory
    kind: str
    series: GrowthSeries
    gap: GrowthSeries
    allocator: AllocatorReading | None = None
    events: deque = field(default_factory=deque)  # (t, alloc_retries, ooms)


@dataclass(frozen=True)
class InstanceVerdict:
    row: InstanceMemory
    kind: str  # "host" or "gpu": the memory its trend follows (the one the headroom check reads)
    bytes: int | None
    growth: Growth | None  # None while collecting
    seconds_to_floor: float  # at its rate; inf unless it grows steadily
    allocator: AllocatorReading | None = None
    gap_growth: Growth | None = None
    gap_seconds_to_floor: float = math.inf
    recent_retries: int = 0  # within the last sustain_s
    recent_ooms: int = 0

    @property
    def name(self) -> str:
        if self.row.is_server:
            return f"server process {self.row.instance} (pid {self.row.pid})"
        return f"{self.row.model} instance {self.row.instance} (pid {self.row.pid})"

    @property
    def rate(self) -> float:
        return self.growth.rate_bytes_per_s if self.growth is not None else 0.0

    @property
    def steady(self) -> bool:
        return self.growth is not None and self.growth.steady

    def to_dict(self) -> dict:
        def finite(x: float) -> float | None:
            return None if math.isinf(x) else x

        found = {
            "model": self.row.model,
            "instance": self.row.instance,
            "pid": self.row.pid,
            "device": self.row.device,
            "kind": self.kind,
            "bytes": self.bytes,
            "host_bytes": self.row.host_bytes,
            "gpu_bytes": self.row.gpu_bytes,
            "rate_bytes_per_s": None if self.growth is None else self.growth.rate_bytes_per_s,
            "growing_for_s": None if self.growth is None else self.growth.growing_for_s,
            "steady": self.steady,
            "seconds_to_floor": finite(self.seconds_to_floor),
        }
        if self.allocator is not None:
            found["allocator"] = {
                "allocated_bytes": self.allocator.allocated_bytes,
                "reserved_bytes": self.allocator.reserved_bytes,
                "gap_bytes": self.allocator.gap_bytes,
                "gap_rate_bytes_per_s": None if self.gap_growth is None else self.gap_growth.rate_bytes_per_s,
                "gap_seconds_to_floor": finite(self.gap_seconds_to_floor),
                "alloc_retries": self.allocator.alloc_retries,
                "ooms": self.allocator.ooms,
                "recent_retries": self.recent_retries,
                "recent_ooms": self.recent_ooms,
            }
        return found


@dataclass(frozen=True)
class LeakAssessment:
    reading: MemoryReading
    floor: int
    horizon_s: float
    sustain_s: float
    total: Growth | None  # of the memory in use in total
    total_samples: int
    total_span_s: float
    instances: list[InstanceVerdict]  # fastest growing first
    held: Mapping[str, str] = field(default_factory=dict)  # {model: why not ready} while a leak reload runs
    reloads: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # {model: {result: count}} so far
    note: str | None = None  # why per-instance rows are missing or partial (e.g. no NVML)

    @property
    def room_bytes(self) -> int:
        return self.reading.free_bytes - self.floor

    @property
    def seconds_to_floor(self) -> float:
        """The total's projection (inf unless free memory falls steadily)."""
        return math.inf if self.total is None else self.total.seconds_to(self.room_bytes)

    @property
    def blamed(self) -> list[InstanceVerdict]:
        """Instances whose steady growth reaches the floor within the horizon, soonest first."""
        found = [v for v in self.instances if min(v.seconds_to_floor, v.gap_seconds_to_floor) < self.horizon_s]
        return sorted(found, key=lambda v: min(v.seconds_to_floor, v.gap_seconds_to_floor))

    @property
    def at_risk(self) -> list[InstanceVerdict]:
        """Instances whose allocator retried or ran out of memory recently."""
        return [v for v in self.instances if v.recent_retries or v.recent_ooms]

    @property
    def ok(self) -> bool:
        return not self.held and not self.blamed and not self.at_risk and self.seconds_to_floor >= self.horizon_s


class LeakWatch:
    """The series behind the leak trend; fed by the sampler, judged by a run."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.total = GrowthSeries(window_s)
        self._total_source: str | None = None
        self._tracked: dict[tuple[str, int], _Tracked] = {}
        self.note: str | None = None  # why per-instance rows are missing or partial

    def observe(
        self,
        now: float,
        reading: MemoryReading,
        instances: Iterable[InstanceMemory] | None = None,
        allocators: Iterable[AllocatorReading] = (),
    ) -> None:
        if reading.source != self._total_source:  # another kind of memory: a new history
            self.total = GrowthSeries(self.window_s)
            self._tracked.clear()
            self._total_source = reading.source
        self.total.add(now, reading.total_bytes - reading.free_bytes)
        if instances is None:
            return
        kind = "gpu" if reading.source == "gpu" else "host"
        seen = set()
        for row in instances:
            value = row.gpu_bytes if kind == "gpu" else row.host_bytes
            if value is None:
                continue
            key = (row.instance, row.pid)
            seen.add(key)
            tracked = self._tracked.get(key)
            if tracked is None:
                tracked = self._tracked[key] = _Tracked(row, kind, GrowthSeries(self.window_s), GrowthSeries(self.window_s))
            tracked.row = row
            tracked.series.add(now, value)
        for key in set(self._tracked) - seen:  # gone: unloaded, reloaded (a new pid), crashed
            del self._tracked[key]
        for reading_ in allocators:
            tracked = self._tracked.get((reading_.instance, reading_.pid))
            if tracked is None or (tracked.allocator is not None and tracked.allocator.at == reading_.at):
                continue  # not one of ours, or nothing new since the last sample
            tracked.allocator = reading_
            tracked.gap.add(now, reading_.gap_bytes)
            tracked.events.append((now, reading_.alloc_retries, reading_.ooms))
            while now - tracked.events[0][0] > self.window_s:
                tracked.events.popleft()

    def assess(
        self, reading: MemoryReading, floor: int, horizon_s: float, sustain_s: float, min_samples: int
    ) -> LeakAssessment:
        room = reading.free_bytes - floor
        verdicts = []
        for tracked in self._tracked.values():
            growth = tracked.series.growth(sustain_s, MIN_RISE_BYTES, min_samples)
            gap = tracked.gap.growth(sustain_s, MIN_RISE_BYTES, min_samples) if tracked.allocator else None
            retries, ooms = _recent(tracked.events, sustain_s)
            verdicts.append(InstanceVerdict(
                tracked.row, tracked.kind, None if tracked.series.last is None else int(tracked.series.last),
                growth, math.inf if growth is None else growth.seconds_to(room),
                tracked.allocator, gap, math.inf if gap is None else gap.seconds_to(room), retries, ooms,
            ))
        verdicts.sort(key=lambda v: (-v.rate, v.row.model, v.row.instance))
        total = self.total.growth(sustain_s, MIN_RISE_BYTES, min_samples)
        return LeakAssessment(reading, floor, horizon_s, sustain_s, total, len(self.total), self.total.span_s, verdicts)


def _recent(events: deque, sustain_s: float) -> tuple[int, int]:
    """Allocation retries and OOMs counted within the last sustain_s (a counter that went down restarted)."""
    if not events:
        return 0, 0
    now = events[-1][0]
    retries = ooms = 0
    previous = None
    for t, r, o in events:
        if previous is not None and t >= now - sustain_s:
            retries += r - previous[0] if r >= previous[0] else r
            ooms += o - previous[1] if o >= previous[1] else o
        previous = (r, o)
    return retries, ooms


# --- the check ----------------------------------------------------------------------------


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def per_minute(rate_bytes_per_s: float) -> str:
    mb = rate_bytes_per_s * 60 / MB
    return f"{mb:+.0f} MB/min" if abs(mb) >= 10 else f"{mb:+.1f} MB/min"


def _blame(v: InstanceVerdict, source: str) -> str:
    if v.gap_seconds_to_floor < v.seconds_to_floor:
        gap, a = v.gap_growth, v.allocator
        assert gap is not None and a is not None
        return (f"{v.name} allocator gap (reserved, not allocated) {per_minute(gap.rate_bytes_per_s)} for "
                f"{duration(gap.growing_for_s)} (reserved {a.reserved_bytes / MB:.0f} MB, allocated "
                f"{a.allocated_bytes / MB:.0f} MB), at this rate the {source} floor in {duration(v.gap_seconds_to_floor)}")
    assert v.growth is not None
    return (f"{v.name} {per_minute(v.growth.rate_bytes_per_s)} for {duration(v.growth.growing_for_s)}, "
            f"at this rate the {source} floor in {duration(v.seconds_to_floor)}")


def _risk(v: InstanceVerdict, sustain_s: float) -> str:
    what = []
    if v.recent_ooms:
        what.append(f"{v.recent_ooms} out-of-memory error(s)")
    if v.recent_retries:
        what.append(f"{v.recent_retries} allocation retr{'y' if v.recent_retries == 1 else 'ies'}")
    a = v.allocator
    assert a is not None
    return (f"{v.name}: {' and '.join(what)} in the last {duration(sustain_s)} (its CUDA allocator ran out of "
            f"device memory and emptied its cache; reserved {a.reserved_bytes / MB:.0f} MB, allocated "
            f"{a.allocated_bytes / MB:.0f} MB): starvation risk")


def _others(named: list[InstanceVerdict], everyone: list[InstanceVerdict]) -> str:
    rest = [v for v in everyone if v not in named]
    growing = [v for v in rest if v.steady]
    collecting = sum(v.growth is None for v in rest)  # new processes (a reload, a late load): no verdict yet
    flat = len(rest) - len(growing) - collecting
    other = "other " if named else ""
    parts = []
    if growing:
        shown = ", ".join(f"{v.row.instance} {per_minute(v.rate)}" for v in growing[:3])
        parts.append(f"{len(growing)} {other}instance{'s' if len(growing) > 1 else ''} growing ({shown})")
    parts.append(f"{flat} {other}instance{'' if flat == 1 else 's'} flat")
    if collecting:
        parts.append(f"{collecting} still collecting samples")
    return ", ".join(parts)


def check_leak_trend(a: LeakAssessment, min_samples: int) -> CheckResult:
    source = "GPU" if a.reading.source == "gpu" else a.reading.source
    limit = {"horizon_s": a.horizon_s, "sustain_s": a.sustain_s}
    value = {
        "samples": a.total_samples,
        "slope_bytes_per_s": None if a.total is None else -a.total.rate_bytes_per_s,  # of free memory
        "seconds_to_floor": None if math.isinf(a.seconds_to_floor) else a.seconds_to_floor,
        "steady": a.total is not None and a.total.steady,
        "growing_for_s": None if a.total is None else a.total.growing_for_s,
        "instances": [v.to_dict() for v in a.instances],
        "blamed": [v.row.instance for v in a.blamed],
        "at_risk": [v.row.instance for v in a.at_risk],
        "reloading": dict(a.held),
        "reloads": {m: dict(r) for m, r in a.reloads.items()},
        "note": a.note,
    }
    named = a.blamed + [v for v in a.at_risk if v not in a.blamed]
    if named or a.held:
        reasons = list(a.held.values()) + [_blame(v, source) if v in a.blamed else _risk(v, a.sustain_s) for v in named]
        others = [_others(named, a.instances)] if named else []
        return CheckResult(CHECK, False, value, limit, "; ".join(reasons + others))
    if a.total is None:
        return CheckResult(
            CHECK, True, value, limit,
            f"collecting samples ({a.total_samples} of at least {min_samples}, "
            f"{a.total_span_s:.0f} s of at least {a.sustain_s:.0f} s)")
    falling = a.total.rate_bytes_per_s / MB  # the total's rate is of memory in use: free falls as fast
    if a.seconds_to_floor < a.horizon_s:
        growing = [v for v in a.instances if v.steady]
        collecting = any(v.growth is None for v in a.instances)
        who = _others([], a.instances) if growing or collecting else (
            f"no model instance grows steadily ({len(a.instances)} flat): the memory goes elsewhere")
        return CheckResult(
            CHECK, False, value, limit,
            f"free {source} memory falling {falling:.2f} MiB/s for {duration(a.total.growing_for_s)}: floor in "
            f"{a.seconds_to_floor:.0f} s (< horizon {a.horizon_s:.0f} s); {who}")
    if a.total.steady:
        reason = (f"free {source} memory falling {falling:.2f} MiB/s for {duration(a.total.growing_for_s)}: floor in "
                  f"{a.seconds_to_floor:.0f} s (>= horizon {a.horizon_s:.0f} s)")
    else:
        reason = f"free {source} memory not falling steadily ({0.0 - falling:+.2f} MiB/s)"
    top = next((v for v in a.instances if v.steady), None)
    if top is not None:
        reason += f"; fastest steady growth: {top.row.instance} {per_minute(top.rate)}"
    return CheckResult(CHECK, True, value, limit, reason)
