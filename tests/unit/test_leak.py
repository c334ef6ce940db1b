"""triton_guard.canary.leak: the leak trend per instance and in total, the blame and its wording."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from triton_guard.canary.allocator import AllocatorReading
from triton_guard.canary.instances import SERVER_ROW, InstanceMemory
from triton_guard.canary.leak import LeakWatch, check_leak_trend, duration, per_minute
from triton_guard.canary.memory import MemoryReading

MB = 1 << 20
GB = 1 << 30
SUSTAIN_S = 120.0
HORIZON_S = 900.0
MIN_SAMPLES = 10
TOTAL = 16 * GB
FLOOR = 2 * GB
PIDS = {SERVER_ROW: 4000, "canary_0_0": 4103, "classifier_0_0": 4101, "classifier_0_1": 4102}


def rows(values: dict[str, float], pids=PIDS, gpu: dict[str, float] | None = None) -> list[InstanceMemory]:
    out = []
    for instance, value in values.items():
        model = SERVER_ROW if instance == SERVER_ROW else instance.rsplit("_", 2)[0]
        out.append(InstanceMemory(model, instance, pids[instance], int(value),
                                  None if gpu is None else int(gpu[instance]), ("gpu0",) if gpu else ()))
    return out


def run(watch: LeakWatch, seconds: int, shapes: dict, free_at=None, start: int = 0, noise_mb: float = 0.5, seed=0):
    """Feed `seconds` one-second samples; shapes[instance](t) -> bytes; free memory follows their growth."""
    rng = np.random.default_rng(seed)
    base = {i: f(0) for i, f in shapes.items()}
    reading = None
    for t in range(start, start + seconds):
        values = {i: f(t) + rng.normal(0, noise_mb * MB) for i, f in shapes.items()}
        used = sum(values[i] - base[i] for i in values)
        free = free_at(t) if free_at else 6 * GB - used
        reading = MemoryReading("host", TOTAL, int(free))
        watch.observe(float(t), reading, rows(values))
    return reading


def flat(level_mb):
    return lambda t: level_mb * MB


def leak(level_mb, mb_per_min, from_t=0):
    return lambda t: level_mb * MB + max(t - from_t, 0) * mb_per_min * MB / 60


def warm_up(level_mb, extra_mb, tau_s):
    return lambda t: level_mb * MB + extra_mb * MB * (1 - math.exp(-t / tau_s))


def judge(watch, reading, floor=FLOOR, horizon=HORIZON_S):
    assessment = watch.assess(reading, floor, horizon, SUSTAIN_S, MIN_SAMPLES)
    return assessment, check_leak_trend(assessment, MIN_SAMPLES)


def test_a_leaking_instance_is_named_in_the_issues_words_and_the_others_are_flat():
    watch = LeakWatch(window_s=600)
    shapes = {SERVER_ROW: flat(900), "canary_0_0": flat(350), "classifier_0_0": flat(400),
              "classifier_0_1": leak(400, 38, from_t=240)}
    # Free memory such that, at 38 MB/min, the floor is 11 minutes away once the leak has run 6 minutes.
    reading = run(watch, 600, shapes, free_at=lambda t: FLOOR + 38 * MB * 11 + 38 * MB * (600 - t) / 60)
    assessment, check = judge(watch, reading)
    assert not check.ok
    assert check.reason == (
        "classifier instance classifier_0_1 (pid 4102) +38 MB/min for 6 min, at this rate the host floor in 11 min; "
        "3 other instances flat"
    )
    assert check.value["blamed"] == ["classifier_0_1"]
    top = check.value["instances"][0]
    assert (top["instance"], top["pid"], top["steady"]) == ("classifier_0_1", 4102, True)
    assert top["rate_bytes_per_s"] == pytest.approx(38 * MB / 60, rel=0.05)
    json.dumps(check.value, allow_nan=False)  # standard JSON: no inf


def test_the_other_instance_is_never_named_while_one_leaks():
    watch = LeakWatch(window_s=600)
    shapes = {SERVER_ROW: flat(900), "classifier_0_0": warm_up(400, 300, 20), "classifier_0_1": leak(400, 600, from_t=60)}
    for end in range(130, 600, 10):  # every canary run along the way
        reading = run(watch, 10, shapes, start=end - 10, seed=end)
        _, check = judge(watch, reading)
        assert "classifier_0_0 (pid" not in check.reason
        if not check.ok:
            assert check.reason.startswith("classifier instance classifier_0_1 (pid 4102)")


def test_a_warm_up_and_a_cache_filling_once_are_not_blamed_even_near_the_floor():
    watch = LeakWatch(window_s=600)
    shapes = {SERVER_ROW: flat(900), "classifier_0_0": warm_up(400, 1500, 40),
              "classifier_0_1": lambda t: 400 * MB + 8 * MB * min(t, 100)}  # an 800 MB cache, filled in 100 s
    for end in range(130, 600, 10):
        reading = run(watch, 10, shapes, start=end - 10, free_at=lambda t: FLOOR + 300 * MB, seed=end)
        assessment, check = judge(watch, reading)
        assert check.ok, (end, check.reason)
        assert assessment.blamed == []


def test_free_memory_falling_with_no_instance_growing_says_the_memory_goes_elsewhere():
    watch = LeakWatch(window_s=600)
    shapes = {SERVER_ROW: flat(900), "classifier_0_0": flat(400)}
    reading = run(watch, 300, shapes, free_at=lambda t: 4 * GB - 5 * MB * t)  # something outside the server
    _, check = judge(watch, reading)
    assert not check.ok
    assert check.reason.startswith("free host memory falling 5.00 MiB/s for ")
    assert check.reason.endswith("no model instance grows steadily (2 flat): the memory goes elsewhere")
    assert check.value["seconds_to_floor"] == pytest.approx((4 * GB - 5 * MB * 299 - FLOOR) / (5 * MB), rel=0.05)


def test_a_slow_leak_far_from_the_floor_passes_and_is_shown_as_the_fastest_growth():
    watch = LeakWatch(window_s=600)
    reading = run(watch, 400, {SERVER_ROW: flat(900), "classifier_0_1": leak(400, 12)}, free_at=lambda t: 10 * GB)
    _, check = judge(watch, reading)
    assert check.ok
    assert check.reason == "free host memory not falling steadily (+0.00 MiB/s); fastest steady growth: classifier_0_1 +12 MB/min"


def test_while_collecting_the_check_passes_and_says_how_far_it_is():
    watch = LeakWatch(window_s=600)
    reading = run(watch, 30, {"classifier_0_1": leak(400, 600)})
    _, check = judge(watch, reading)
    assert check.ok and check.reason == "collecting samples (30 of at least 10, 29 s of at least 120 s)"
    assert check.value["instances"][0]["steady"] is False and check.value["instances"][0]["rate_bytes_per_s"] is None


def test_a_reloaded_instance_starts_a_new_history():
    watch = LeakWatch(window_s=600)
    shapes = {"classifier_0_1": leak(400, 600)}
    run(watch, 300, shapes)
    # The model was reloaded: the same instance name in a new process, starting small again.
    reading = MemoryReading("host", TOTAL, 6 * GB)
    for t in range(300, 340):
        watch.observe(float(t), reading, rows({"classifier_0_1": 400 * MB}, pids={"classifier_0_1": 4200}))
    assessment, check = judge(watch, reading)
    assert [(v.row.pid, v.growth) for v in assessment.instances] == [(4200, None)]  # collecting again
    assert check.value["blamed"] == []


def test_memory_of_another_kind_starts_a_new_history():
    watch = LeakWatch(window_s=600)
    run(watch, 300, {"classifier_0_1": leak(400, 600)})
    watch.observe(300.0, MemoryReading("cgroup", 8 * GB, 4 * GB), rows({"classifier_0_1": 500 * MB}))
    assert len(watch.total) == 1


def test_on_a_gpu_host_the_instances_device_memory_is_trended():
    watch = LeakWatch(window_s=600)
    for t in range(400):
        gpu = {"classifier_0_0": 2 * GB, "classifier_0_1": 2 * GB + t * 10 * MB}
        host = {"classifier_0_0": 900 * MB, "classifier_0_1": 900 * MB}
        reading = MemoryReading("gpu", 80 * GB, int(10 * GB - t * 10 * MB))
        watch.observe(float(t), reading, rows(host, gpu=gpu))
    assessment, check = judge(watch, reading, floor=8 * GB)
    assert not check.ok and "at this rate the GPU floor in" in check.reason
    assert check.value["instances"][0]["kind"] == "gpu" and check.value["instances"][0]["device"] == "gpu0"
    assert assessment.blamed[0].row.instance == "classifier_0_1"


def allocator(t, instance="classifier_0_1", pid=4102, allocated=2 * GB, reserved=3 * GB, retries=0, ooms=0):
    return AllocatorReading("classifier", instance, pid, "gpu0", int(allocated), int(reserved), retries, ooms, float(t))


def gpu_run(watch, seconds, allocators, free=40 * GB):
    reading = MemoryReading("gpu", 80 * GB, free)
    for t in range(seconds):
        gpu = {"classifier_0_0": 3 * GB, "classifier_0_1": 3 * GB}
        watch.observe(float(t), reading, rows({"classifier_0_0": 0, "classifier_0_1": 0}, gpu=gpu), allocators(t))
    return reading


def test_allocation_retries_are_a_starvation_risk_even_with_free_memory_to_spare():
    watch = LeakWatch(window_s=600)
    reading = gpu_run(watch, 300, lambda t: [allocator(t, retries=0 if t < 250 else 3)])
    _, check = judge(watch, reading)
    assert not check.ok
    assert check.reason.startswith(
        "classifier instance classifier_0_1 (pid 4102): 3 allocation retries in the last 2 min (its CUDA allocator "
        "ran out of device memory and emptied its cache; reserved 3072 MB, allocated 2048 MB): starvation risk")
    assert check.value["at_risk"] == ["classifier_0_1"]
    rows_by_instance = {row["instance"]: row for row in check.value["instances"]}
    assert rows_by_instance["classifier_0_1"]["allocator"]["recent_retries"] == 3
    assert "allocator" not in rows_by_instance["classifier_0_0"]


def test_retries_older_than_the_sustain_time_no_longer_count():
    watch = LeakWatch(window_s=600)
    reading = gpu_run(watch, 400, lambda t: [allocator(t, retries=0 if t < 100 else 3, ooms=0 if t < 100 else 1)])
    _, check = judge(watch, reading)
    assert check.ok, check.reason


def test_a_restarted_allocator_counts_from_zero():
    watch = LeakWatch(window_s=600)
    reading = gpu_run(watch, 300, lambda t: [allocator(t, retries=50 if t < 250 else 2)])
    assessment, _ = judge(watch, reading)
    assert assessment.at_risk[0].recent_retries == 2


def test_a_growing_allocator_gap_is_blamed_as_fragmentation():
    watch = LeakWatch(window_s=600)
    # Reserved grows 20 MB/s while allocated stays: fragmentation; 2 GB to the floor.
    reading = gpu_run(watch, 300, lambda t: [allocator(t, reserved=3 * GB + t * 20 * MB)], free=10 * GB)
    _, check = judge(watch, reading, floor=8 * GB)
    assert not check.ok
    assert check.reason.startswith("classifier instance classifier_0_1 (pid 4102) allocator gap (reserved, not allocated) "
                                   "+1200 MB/min for ")
    assert "at this rate the GPU floor in 2 min" in check.reason


def test_an_allocator_reading_of_another_process_is_ignored():
    watch = LeakWatch(window_s=600)
    reading = gpu_run(watch, 300, lambda t: [allocator(t, pid=9999, retries=t)])
    assessment, check = judge(watch, reading)
    assert check.ok and all(v.allocator is None for v in assessment.instances)


@pytest.mark.parametrize("seconds, text", [(45, "45 s"), (89, "89 s"), (90, "2 min"), (660, "11 min"), (7200, "2.0 h")])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert duration(seconds) == text


def test_rates_per_minute_in_mb():
    assert per_minute(38 * MB / 60) == "+38 MB/min"
    assert per_minute(0.25 * MB / 60) == "+0.2 MB/min"
    assert per_minute(-2 * MB / 60) == "-2.0 MB/min"


def test_instances_still_collecting_are_counted_apart_not_called_flat():
    watch = LeakWatch(window_s=600)
    run(watch, 300, {SERVER_ROW: flat(900), "classifier_0_0": flat(400), "classifier_0_1": leak(400, 600)})
    reading = MemoryReading("host", TOTAL, int(3 * GB))
    watch.observe(300.0, reading, rows({SERVER_ROW: 900 * MB, "classifier_0_0": 400 * MB, "classifier_0_1": 3000 * MB,
                                        "canary_0_0": 350 * MB}))  # the canary appears late: no verdict yet
    _, check = judge(watch, reading)
    assert check.reason.endswith("; 2 other instances flat, 1 still collecting samples")
