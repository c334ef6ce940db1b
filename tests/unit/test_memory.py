"""triton_guard.canary.memory: host, cgroup and GPU readings and the floor (the leak trend: test_growth.py, test_leak.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from triton_guard.canary.memory import MemoryReading, floor_bytes, read_cgroup, read_gpu, read_host, read_system_memory

KIB = 1024
MIB = 1024 * 1024
GIB = 1024 * MIB

# What the kernel writes for "no limit" in cgroup v1: LONG_MAX rounded down to a page.
V1_UNLIMITED = 9223372036854771712


def write_meminfo(path: Path, total_kb: int, available_kb: int) -> Path:
    # The layout of a real /proc/meminfo, including lines with no "kB" unit.
    path.write_text(
        f"MemTotal:       {total_kb} kB\n"
        "MemFree:          123456 kB\n"
        f"MemAvailable:   {available_kb} kB\n"
        "Buffers:           20480 kB\n"
        "HugePages_Total:       0\n"
        "HugePages_Free:        0\n"
        "Hugepagesize:       2048 kB\n"
    )
    return path


def cgroup_v2(root: Path, max_text: str, current: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "memory.max").write_text(max_text + "\n")
    (root / "memory.current").write_text(f"{current}\n")
    return root


def cgroup_v1(root: Path, limit: int, usage: int) -> Path:
    (root / "memory").mkdir(parents=True, exist_ok=True)
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (root / "memory" / "memory.usage_in_bytes").write_text(f"{usage}\n")
    return root


# --- readings ---------------------------------------------------------------------


def test_read_host_converts_kb_to_bytes(tmp_path):
    meminfo = write_meminfo(tmp_path / "meminfo", total_kb=16_000_000, available_kb=4_000_000)
    reading = read_host(meminfo)
    assert reading == MemoryReading("host", 16_000_000 * 1024, 4_000_000 * 1024)
    assert reading.free_fraction == pytest.approx(0.25)


def test_free_fraction_of_zero_total_is_zero():
    assert MemoryReading("gpu", 0, 0).free_fraction == 0.0


def test_read_cgroup_v2_limit_and_current(tmp_path):
    root = cgroup_v2(tmp_path / "cg", str(2 * GIB), 512 * MIB)
    assert read_cgroup(root) == MemoryReading("cgroup", 2 * GIB, 2 * GIB - 512 * MIB)


def test_read_cgroup_v2_max_means_no_limit(tmp_path):
    assert read_cgroup(cgroup_v2(tmp_path / "cg", "max", 512 * MIB)) is None


def test_read_cgroup_usage_above_limit_leaves_zero_free(tmp_path):
    root = cgroup_v2(tmp_path / "cg", str(1 * GIB), 1 * GIB + 4096)
    assert read_cgroup(root) == MemoryReading("cgroup", 1 * GIB, 0)


def test_read_cgroup_v1_limit_and_usage(tmp_path):
    root = cgroup_v1(tmp_path / "cg", 4 * GIB, 3 * GIB)
    assert read_cgroup(root) == MemoryReading("cgroup", 4 * GIB, 1 * GIB)


def test_read_cgroup_v1_huge_value_means_no_limit(tmp_path):
    assert read_cgroup(cgroup_v1(tmp_path / "cg", V1_UNLIMITED, 3 * GIB)) is None


def test_read_cgroup_v2_wins_over_v1_when_both_exist(tmp_path):
    root = cgroup_v1(tmp_path / "cg", 4 * GIB, 3 * GIB)
    cgroup_v2(root, str(8 * GIB), 1 * GIB)
    assert read_cgroup(root) == MemoryReading("cgroup", 8 * GIB, 7 * GIB)


@pytest.mark.parametrize(
    "files",
    [
        {},  # no cgroup files at all
        {"memory.max": "1073741824"},  # v2 without memory.current
        {"memory.current": "1"},  # v2 without memory.max (the root cgroup)
        {"memory/memory.limit_in_bytes": "1073741824"},  # v1 without usage
        {"memory/memory.usage_in_bytes": "1"},  # v1 without limit
    ],
)
def test_read_cgroup_missing_files_give_none(tmp_path, files):
    root = tmp_path / "cg"
    root.mkdir()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert read_cgroup(root) is None


def test_system_memory_takes_cgroup_when_it_leaves_less_room(tmp_path):
    meminfo = write_meminfo(tmp_path / "meminfo", total_kb=64 * 1024 * 1024, available_kb=32 * 1024 * 1024)  # 32 GiB free
    root = cgroup_v2(tmp_path / "cg", str(8 * GIB), 6 * GIB)  # 2 GiB free
    assert read_system_memory(meminfo, root) == MemoryReading("cgroup", 8 * GIB, 2 * GIB)


def test_system_memory_takes_host_when_it_leaves_less_room(tmp_path):
    meminfo = write_meminfo(tmp_path / "meminfo", total_kb=64 * 1024 * 1024, available_kb=1 * 1024 * 1024)  # 1 GiB free
    root = cgroup_v2(tmp_path / "cg", str(8 * GIB), 6 * GIB)  # 2 GiB free
    assert read_system_memory(meminfo, root) == MemoryReading("host", 64 * GIB, 1 * GIB)


def test_system_memory_takes_host_without_a_cgroup_limit(tmp_path):
    meminfo = write_meminfo(tmp_path / "meminfo", total_kb=8 * 1024 * 1024, available_kb=3 * 1024 * 1024)
    root = cgroup_v2(tmp_path / "cg", "max", 6 * GIB)
    assert read_system_memory(meminfo, root) == MemoryReading("host", 8 * GIB, 3 * GIB)
    assert read_system_memory(meminfo, tmp_path / "no-cgroup-here") == MemoryReading("host", 8 * GIB, 3 * GIB)


def test_read_gpu_from_summed_gauges():
    metrics = {"nv_gpu_memory_total_bytes": 2 * 80e9, "nv_gpu_memory_used_bytes": 30e9, "nv_gpu_utilization": 0.5}
    assert read_gpu(metrics) == MemoryReading("gpu", 160_000_000_000, 130_000_000_000)


@pytest.mark.parametrize(
    "metrics",
    [
        {},  # a server without GPUs publishes neither gauge
        {"nv_gpu_memory_used_bytes": 1e9},
        {"nv_gpu_memory_total_bytes": 8e9},
        {"nv_gpu_memory_total_bytes": 0.0, "nv_gpu_memory_used_bytes": 0.0},
    ],
)
def test_read_gpu_absent_or_zero_total_gives_none(metrics):
    assert read_gpu(metrics) is None


def test_read_gpu_zero_used_is_all_free():
    assert read_gpu({"nv_gpu_memory_total_bytes": 8e9, "nv_gpu_memory_used_bytes": 0.0}) == MemoryReading(
        "gpu", 8_000_000_000, 8_000_000_000
    )


# --- floor ------------------------------------------------------------------------


def test_floor_fraction_is_stricter():
    # 10% of 16 GiB = 1.6 GiB > 512 MiB
    assert floor_bytes(16 * GIB, 0.10, 512) == int(16 * GIB * 0.10)


def test_floor_mb_is_stricter():
    # 10% of 1 GiB = 102.4 MiB < 512 MiB
    assert floor_bytes(1 * GIB, 0.10, 512) == 512 * MIB


def test_floor_zero_mb_uses_fraction_and_zero_both_gives_zero():
    assert floor_bytes(1000, 0.25, 0.0) == 250
    assert floor_bytes(1000, 0.0, 0.0) == 0
