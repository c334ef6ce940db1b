"""Memory headroom and its trend: catch a slow leak before it starves the model.

Where memory is read, whichever binds:
  * GPU: Triton's own gauges nv_gpu_memory_used_bytes / nv_gpu_memory_total_bytes
    (read from /metrics, so the canary never creates a CUDA context);
  * no GPU: the container's cgroup limit (v2 memory.max / memory.current, or
    v1 memory.limit_in_bytes / memory.usage_in_bytes) when it is set and
    smaller than the host, else the host's MemAvailable / MemTotal.

The trend of these readings, in total and per model instance, and who is to
blame for a fall: canary/growth.py, canary/leak.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# cgroup v1 reports "no limit" as a huge page-aligned number.
_CGROUP_V1_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class MemoryReading:
    source: str  # "gpu", "cgroup" or "host"
    total_bytes: int
    free_bytes: int

    @property
    def free_fraction(self) -> float:
        return self.free_bytes / self.total_bytes if self.total_bytes else 0.0


def read_host(meminfo: Path = Path("/proc/meminfo")) -> MemoryReading:
    values = {}
    for line in meminfo.read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) * 1024  # kB
    return MemoryReading("host", values["MemTotal"], values["MemAvailable"])


def read_cgroup(root: Path = Path("/sys/fs/cgroup")) -> MemoryReading | None:
    """The container's memory limit and use, or None when no limit is set."""
    v2_max, v2_current = root / "memory.max", root / "memory.current"
    if v2_max.exists() and v2_current.exists():
        limit = v2_max.read_text().strip()
        if limit == "max":
            return None
        total, used = int(limit), int(v2_current.read_text())
    else:
        v1_limit, v1_usage = root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes"
        if not (v1_limit.exists() and v1_usage.exists()):
            return None
        total, used = int(v1_limit.read_text()), int(v1_usage.read_text())
        if total >= _CGROUP_V1_UNLIMITED:
            return None
    return MemoryReading("cgroup", total, max(total - used, 0))


def read_system_memory(meminfo: Path = Path("/proc/meminfo"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> MemoryReading:
    """Host or cgroup memory, whichever leaves less room."""
    host = read_host(meminfo)
    cgroup = read_cgroup(cgroup_root)
    if cgroup is not None and cgroup.free_bytes < host.free_bytes:
        return cgroup
    return host


def read_gpu(metrics: dict[str, float]) -> MemoryReading | None:
    """From Triton's GPU gauges (summed over GPUs); None on a server without GPUs.

    `metrics` maps a sample name to its value summed over label sets, as
    `triton_guard.promtext.sum_by_name` returns.
    """
    total = metrics.get("nv_gpu_memory_total_bytes")
    used = metrics.get("nv_gpu_memory_used_bytes")
    if not total or used is None:
        return None
    return MemoryReading("gpu", int(total), int(total - used))


def floor_bytes(total_bytes: int, floor_fraction: float, floor_mb: float) -> int:
    """The stricter of a fraction of the total and an absolute amount."""
    return max(int(total_bytes * floor_fraction), int(floor_mb * 1024 * 1024))
