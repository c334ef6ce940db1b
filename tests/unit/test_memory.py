"""triton_guard.canary.memory: host, cgroup and GPU readings, the floor, and the leak trend."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from triton_guard.canary.memory import LeakTrend, MemoryReading, floor_bytes, read_cgroup, read_gpu, read_host, read_system_memory

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


# --- leak trend -------------------------------------------------------------------


def linear(trend: LeakTrend, start_mib: float, mib_per_s: float, times) -> None:
    for t in times:
        trend.add(t, int((start_mib + mib_per_s * t) * MIB))


def test_linear_decline_gives_exact_slope_and_time_to_floor():
    trend = LeakTrend(window_s=300, min_samples=10)
    linear(trend, 1000, -10, range(10))  # 1000 MiB free at t=0, losing 10 MiB/s; last sample t=9: 910 MiB
    result = trend.trend(floor=100 * MIB)
    assert result.samples == 10
    assert result.slope_bytes_per_s == pytest.approx(-10 * MIB, rel=1e-12)
    assert result.seconds_to_floor == pytest.approx((910 - 100) / 10, rel=1e-12)  # 81 s


def test_uneven_sample_times_still_give_exact_slope():
    trend = LeakTrend(window_s=300, min_samples=3)
    linear(trend, 500, -2.5, [0.0, 0.7, 3.1, 3.2, 10.0])
    result = trend.trend(floor=0)
    assert result.slope_bytes_per_s == pytest.approx(-2.5 * MIB, rel=1e-9)
    assert result.seconds_to_floor == pytest.approx((500 - 25) / 2.5, rel=1e-9)  # 190 s


def test_flat_free_memory_never_reaches_the_floor():
    trend = LeakTrend(window_s=300, min_samples=3)
    for t in range(5):
        trend.add(t, 4 * GIB)
    result = trend.trend(floor=1 * GIB)
    assert result.slope_bytes_per_s == 0
    assert result.seconds_to_floor == math.inf


def test_rising_free_memory_never_reaches_the_floor():
    trend = LeakTrend(window_s=300, min_samples=3)
    linear(trend, 100, +5, range(5))
    result = trend.trend(floor=1 * GIB)  # even below the floor: not falling is not a leak
    assert result.slope_bytes_per_s == pytest.approx(5 * MIB)
    assert result.seconds_to_floor == math.inf


def test_no_trend_below_min_samples():
    trend = LeakTrend(window_s=300, min_samples=4)
    linear(trend, 1000, -10, range(3))
    assert len(trend) == 3
    assert trend.trend(floor=0) is None
    trend.add(3, 970 * MIB)
    assert trend.trend(floor=0) is not None


def test_no_trend_until_samples_span_min_span_s():
    trend = LeakTrend(window_s=300, min_samples=3, min_span_s=60)
    linear(trend, 1000, -1, [0, 10, 20, 30, 40, 50, 59.5])  # enough samples, 59.5 s of history
    assert len(trend) == 7
    assert trend.trend(floor=0) is None
    trend.add(60, 940 * MIB)  # exactly 60 s from the first sample
    result = trend.trend(floor=0)
    assert result.slope_bytes_per_s == pytest.approx(-1 * MIB, rel=1e-12)
    assert result.seconds_to_floor == pytest.approx(940, rel=1e-12)


def test_no_trend_when_all_samples_share_one_time():
    trend = LeakTrend(window_s=300, min_samples=3)
    for free in (3, 2, 1):
        trend.add(5.0, free * GIB)
    assert trend.trend(floor=0) is None


def test_already_below_floor_and_falling_gives_zero_seconds():
    trend = LeakTrend(window_s=300, min_samples=3)
    linear(trend, 100, -1, range(5))  # 96 MiB at the end
    assert trend.trend(floor=200 * MIB).seconds_to_floor == 0.0


def test_window_drops_samples_older_than_window_s():
    trend = LeakTrend(window_s=10, min_samples=3)
    # A steep fall long ago, then a slow one: only the slow one may count.
    trend.add(0, 10_000 * MIB)
    trend.add(1, 5_000 * MIB)
    linear(trend, 1000, -1, [20, 25, 30])
    # At t=30 samples at 0 and 1 are 30 and 29 s old: dropped; t=20 is exactly 10 s old: kept.
    assert len(trend) == 3
    result = trend.trend(floor=0)
    assert result.slope_bytes_per_s == pytest.approx(-1 * MIB, rel=1e-12)
    assert result.seconds_to_floor == pytest.approx(970, rel=1e-12)
    trend.add(30.5, 969.5 * MIB)  # now t=20 is 10.5 s old
    assert len(trend) == 3


def test_slope_is_robust_to_symmetric_noise():
    rng = random.Random(1234)
    trend = LeakTrend(window_s=1000, min_samples=10)
    true_slope = -10.0  # MiB/s
    for t in range(120):
        noise = rng.uniform(-20, 20)  # MiB, twice the fall per sample
        trend.add(float(t), int((2000 + true_slope * t + noise) * MIB))
    result = trend.trend(floor=0)
    assert result.slope_bytes_per_s == pytest.approx(true_slope * MIB, rel=0.03)
    # True line at t=119: 2000 - 1190 = 810 MiB -> 81 s to a zero floor.
    assert result.seconds_to_floor == pytest.approx(81, rel=0.05)


def test_slope_with_alternating_noise_has_the_least_squares_error():
    # free = 1000 - 10 t + e (-1)^t for t = 0..N-1 (N even): the least-squares
    # slope is off by e * sum(t (-1)^t) / sum((t - mean)^2) = e * (-N/2) / (N (N^2 - 1) / 12).
    n, e = 60, 50.0
    trend = LeakTrend(window_s=1000, min_samples=10)
    for t in range(n):
        trend.add(float(t), int(round((1000 + 10 * n - 10 * t + e * (-1) ** t) * MIB)))
    expected = (-10 - 6 * e / (n * n - 1)) * MIB
    result = trend.trend(floor=0)
    assert result.slope_bytes_per_s == pytest.approx(expected, rel=1e-9)
    assert abs(result.slope_bytes_per_s / (-10 * MIB) - 1) < 0.01


def test_projection_starts_from_the_fitted_line_not_the_last_sample():
    trend = LeakTrend(window_s=300, min_samples=4)
    for t, free in enumerate([100, 90, 80, 50]):  # MiB; the last sample dips below the line
        trend.add(t, free * MIB)
    # By hand: mean t 1.5, mean free 80; sum dt*df = (-1.5)(20) + (-0.5)(10) + 0 + (1.5)(-30) = -80;
    # sum dt^2 = 5 -> slope -16 MiB/s; fitted free at t=3: 80 - 16 * 1.5 = 56 MiB.
    result = trend.trend(floor=8 * MIB)
    assert result.slope_bytes_per_s == pytest.approx(-16 * MIB, rel=1e-12)
    assert result.seconds_to_floor == pytest.approx((56 - 8) / 16, rel=1e-12)  # 3.0 s
    assert result.seconds_to_floor != pytest.approx((50 - 8) / 16)  # 2.625 s from the last sample


def test_span_is_the_time_between_the_oldest_and_the_newest_kept_sample():
    trend = LeakTrend(window_s=10.0, min_samples=3)
    assert trend.span_s == 0.0
    trend.add(100.0, 5)
    assert trend.span_s == 0.0
    trend.add(104.5, 5)
    assert trend.span_s == 4.5
    trend.add(112.0, 5)  # the sample at 100 falls out of the 10 s window
    assert trend.span_s == 7.5
