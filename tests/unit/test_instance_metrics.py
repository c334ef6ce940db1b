"""triton_guard.canary.instance_metrics: which per-instance series a report sets, adds to, or resets."""

from __future__ import annotations

import math

from triton_guard import metrics as catalogue
from triton_guard.canary.report import CanaryReport, CheckResult
from triton_guard.canary.instance_metrics import InstanceMetricUpdates

MB = 1 << 20


def row(instance, host, rate=None, to_floor=None, gpu=None, allocator=None, model="classifier"):
    found = {"model": model, "instance": instance, "pid": 1, "device": "cpu", "kind": "host", "bytes": host,
             "host_bytes": host, "gpu_bytes": gpu, "rate_bytes_per_s": rate, "growing_for_s": None,
             "steady": to_floor is not None, "seconds_to_floor": to_floor}
    if allocator:
        found["allocator"] = allocator
    return found


def report(rows, reloads=None):
    value = {"instances": rows, "reloads": reloads or {}}
    return CanaryReport([CheckResult("leak_trend", True, value, {}, "")], 0.01, "cpu")


def by_series(updates):
    return {(m.name, tuple(sorted(labels.items()))): (op, v) for m, labels, op, v in updates}


def test_every_row_gets_its_memory_and_projection_and_growth_once_judged():
    got = by_series(InstanceMetricUpdates().updates(report([
        row("classifier_0_0", 400 * MB), row("classifier_0_1", 900 * MB, rate=2 * MB, to_floor=300.0)])))
    mem = catalogue.INSTANCE_MEMORY_BYTES.name
    assert got[(mem, (("instance", "classifier_0_1"), ("kind", "host"), ("model", "classifier")))] == ("set", 900 * MB)
    to_floor = catalogue.INSTANCE_SECONDS_TO_FLOOR.name
    assert got[(to_floor, (("instance", "classifier_0_1"), ("model", "classifier")))] == ("set", 300.0)
    assert got[(to_floor, (("instance", "classifier_0_0"), ("model", "classifier")))] == ("set", math.inf)
    growth = catalogue.INSTANCE_MEMORY_GROWTH.name
    assert (growth, (("instance", "classifier_0_0"), ("model", "classifier"))) not in got  # still collecting
    assert got[(growth, (("instance", "classifier_0_1"), ("model", "classifier")))] == ("set", 2 * MB)


def test_gpu_and_allocator_kinds_and_counters_that_only_grow():
    allocator = {"allocated_bytes": 2 * MB, "reserved_bytes": 3 * MB, "gap_bytes": MB, "alloc_retries": 4, "ooms": 0}
    updates = InstanceMetricUpdates()
    first = by_series(updates.updates(report([row("classifier_0_1", 9 * MB, gpu=5 * MB, allocator=allocator)])))
    kinds = {labels[1][1]: v for (name, labels), (_, v) in first.items() if name == catalogue.INSTANCE_MEMORY_BYTES.name}
    assert kinds == {"host": 9 * MB, "gpu": 5 * MB, "gpu_allocated": 2 * MB, "gpu_reserved": 3 * MB,
                     "gpu_reserved_unallocated": MB}
    who = (("instance", "classifier_0_1"), ("model", "classifier"))
    assert first[(catalogue.ALLOCATOR_RETRIES.name, who)] == ("add", 4)
    assert first[(catalogue.ALLOCATOR_OOMS.name, who)] == ("add", 0)  # created at 0
    again = by_series(updates.updates(report([row("classifier_0_1", 9 * MB, allocator={**allocator, "alloc_retries": 6})])))
    assert again[(catalogue.ALLOCATOR_RETRIES.name, who)] == ("add", 2)
    assert (catalogue.ALLOCATOR_OOMS.name, who) not in again  # unchanged: nothing to add
    restarted = by_series(updates.updates(report([row("classifier_0_1", 9 * MB, allocator={**allocator, "alloc_retries": 1})])))
    assert restarted[(catalogue.ALLOCATOR_RETRIES.name, who)] == ("add", 1)  # a new process counts from zero


def test_reload_counts_become_counter_increments():
    updates = InstanceMetricUpdates()
    updates.updates(report([], reloads={"classifier": {"reloaded": 1}}))
    got = by_series(updates.updates(report([], reloads={"classifier": {"reloaded": 2, "failed": 1}})))
    assert got[(catalogue.LEAK_RELOADS.name, (("model", "classifier"), ("result", "reloaded")))] == ("add", 1)
    assert got[(catalogue.LEAK_RELOADS.name, (("model", "classifier"), ("result", "failed")))] == ("add", 1)


def test_a_vanished_instance_is_reset_once_so_no_alert_stays_firing():
    updates = InstanceMetricUpdates()
    updates.updates(report([row("gone_0_0", 5 * MB, rate=MB, to_floor=60.0, model="gone")]))
    got = by_series(updates.updates(report([])))
    who = (("instance", "gone_0_0"), ("model", "gone"))
    assert got[(catalogue.INSTANCE_SECONDS_TO_FLOOR.name, who)] == ("set", math.inf)
    assert got[(catalogue.INSTANCE_MEMORY_GROWTH.name, who)] == ("set", 0.0)
    assert got[(catalogue.INSTANCE_MEMORY_BYTES.name, (("instance", "gone_0_0"), ("kind", "host"), ("model", "gone")))] == ("set", 0.0)
    assert updates.updates(report([])) == []  # once


def test_a_run_without_a_memory_reading_changes_nothing():
    updates = InstanceMetricUpdates()
    updates.updates(report([row("classifier_0_0", 5 * MB)]))
    unread = CanaryReport([CheckResult("leak_trend", False, None, None, "not run: memory unreadable")], 0.01, "cpu")
    assert updates.updates(unread) == []


def test_every_update_is_a_declared_family_with_allowed_labels():
    allocator = {"allocated_bytes": 2, "reserved_bytes": 3, "gap_bytes": 1, "alloc_retries": 4, "ooms": 1}
    updates = InstanceMetricUpdates().updates(report(
        [row("classifier_0_1", 9, rate=1.0, to_floor=5.0, gpu=5, allocator=allocator)], reloads={"classifier": {"skipped": 1}}))
    for metric, labels, op, _ in updates:
        assert catalogue.CATALOGUE[metric.name] is metric
        metric.check_labels(labels)
        assert op == ("add" if metric.kind is catalogue.Kind.COUNTER else "set")
