"""The per-instance memory metrics a canary report calls for, as plain updates.

The canary backend publishes them on Triton's /metrics (pb_utils); this
module decides what to publish from the report's `leak_trend` check, so the
decision is unit-tested without Triton:

* gauges (`set`): INSTANCE_MEMORY_BYTES per kind, INSTANCE_MEMORY_GROWTH
  once the trend has a verdict, INSTANCE_SECONDS_TO_FLOOR (+Inf unless the
  instance grows steadily);
* counters (`add`): ALLOCATOR_RETRIES, ALLOCATOR_OOMS and LEAK_RELOADS grow
  by what the report's totals grew since the last report (a total that went
  down restarted: its new value is what was added);
* an instance that is gone (unloaded) gets its gauges reset (0 bytes, no
  growth, +Inf) once, so a stale series never keeps an alert firing.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from triton_guard import metrics as catalogue
from triton_guard.canary.leak import CHECK
from triton_guard.canary.report import CanaryReport
from triton_guard.metrics import Metric

Update = tuple[Metric, dict[str, str], str, float]  # (family, labels, "set" or "add", value)


def _memory_by_kind(row: dict[str, Any]) -> Iterator[tuple[str, float]]:
    yield "host", row["host_bytes"]
    if row.get("gpu_bytes") is not None:
        yield "gpu", row["gpu_bytes"]
    allocator = row.get("allocator")
    if allocator:
        yield "gpu_allocated", allocator["allocated_bytes"]
        yield "gpu_reserved", allocator["reserved_bytes"]
        yield "gpu_reserved_unallocated", allocator["gap_bytes"]


class InstanceMetricUpdates:
    def __init__(self) -> None:
        self._totals: dict[tuple[str, tuple], float] = {}
        self._gauges: set[tuple[str, tuple]] = set()  # (family name, labels) set last time

    def updates(self, report: CanaryReport) -> list[Update]:
        check = next((c for c in report.checks if c.name == CHECK), None)
        value = check.value if check is not None and isinstance(check.value, dict) else None
        if value is None:
            return []  # memory unread this run: keep the last values
        found: list[Update] = []
        gauges: set[tuple[str, tuple]] = set()

        def gauge(metric: Metric, labels: dict[str, str], number: float) -> None:
            found.append((metric, labels, "set", float(number)))
            gauges.add((metric.name, tuple(sorted(labels.items()))))

        for row in value.get("instances", []):
            who = {"model": row["model"], "instance": row["instance"]}
            for kind, number in _memory_by_kind(row):
                gauge(catalogue.INSTANCE_MEMORY_BYTES, {**who, "kind": kind}, number)
            if row.get("rate_bytes_per_s") is not None:
                gauge(catalogue.INSTANCE_MEMORY_GROWTH, who, row["rate_bytes_per_s"])
            to_floor = row.get("seconds_to_floor")
            gauge(catalogue.INSTANCE_SECONDS_TO_FLOOR, who, math.inf if to_floor is None else to_floor)
            allocator = row.get("allocator")
            if allocator:
                found += self._add(catalogue.ALLOCATOR_RETRIES, who, allocator["alloc_retries"])
                found += self._add(catalogue.ALLOCATOR_OOMS, who, allocator["ooms"])
        for model, results in (value.get("reloads") or {}).items():
            for result, count in results.items():
                found += self._add(catalogue.LEAK_RELOADS, {"model": model, "result": result}, count)
        for name, labels in sorted(self._gauges - gauges):
            metric = catalogue.CATALOGUE[name]
            gone = math.inf if metric is catalogue.INSTANCE_SECONDS_TO_FLOOR else 0.0
            found.append((metric, dict(labels), "set", gone))
        self._gauges = gauges
        return found

    def _add(self, metric: Metric, labels: dict[str, str], total: float) -> list[Update]:
        """Grow the counter by what `total` grew; its first appearance creates it (adding 0 if so)."""
        key = (metric.name, tuple(sorted(labels.items())))
        first = key not in self._totals
        last = self._totals.get(key, 0.0)
        self._totals[key] = total
        grown = total - last if total >= last else total
        return [(metric, labels, "add", float(grown))] if grown or first else []
