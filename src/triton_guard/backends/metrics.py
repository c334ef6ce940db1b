"""The one way every backend publishes on Triton's /metrics: families from the catalogue, series on first use.

Import only inside a Triton Python model. The guard (backends/runtime.py),
the canary backend and the drift tap all publish through a `MetricsPublisher`:
it makes each family once from its catalogue entry (triton_guard.metrics) and
keeps it alive (a collected family makes the next update raise), creates each
labelled series on first use and checks its labels against the catalogue.

Every update is a round trip from the stub to the server, so publishers
update from a thread beside the request path, in batches: a histogram is
written as its three counter series (`add_observations`), never one call per
observation.
"""

from __future__ import annotations

import threading
from typing import Iterable, Mapping

import triton_python_backend_utils as pb_utils

from triton_guard.guard.metrics import cumulative_bucket_counts
from triton_guard.metrics import Kind, Metric


class MetricsPublisher:
    """Series of catalogue metrics with `labels` (e.g. the model) on every one of them."""

    def __init__(self, **labels: str) -> None:
        self.labels = labels
        self._families: dict[str, object] = {}  # series name -> pb_utils.MetricFamily (kept alive)
        self._series: dict[tuple, object] = {}  # (series name, labels) -> pb_utils.Metric
        self._lock = threading.Lock()

    # --- pushing ------------------------------------------------------------------

    def set(self, metric: Metric, value: float, **labels: str) -> None:
        self._metric(metric, metric.name, labels).set(float(value))

    def increment(self, metric: Metric, amount: float, **labels: str) -> None:
        self._metric(metric, metric.name, labels).increment(float(amount))

    def add_observations(self, metric: Metric, values: Iterable[float], **labels: str) -> None:
        """A batch of a histogram's observations, as its _bucket/_sum/_count counters."""
        values = list(values)
        if not values:
            return
        counts = cumulative_bucket_counts(values, metric.buckets)
        for le, count in zip(metric.bucket_bounds, counts):
            if count:
                self._metric(metric, metric.name + "_bucket", {**labels, "le": le}).increment(float(count))
        self._metric(metric, metric.name + "_sum", labels).increment(float(sum(values)))
        self._metric(metric, metric.name + "_count", labels).increment(float(len(values)))

    # --- series ---------------------------------------------------------------------

    def _metric(self, metric: Metric, series: str, labels: Mapping[str, str]):
        labels = {**self.labels, **labels}
        key = (series, tuple(sorted(labels.items())))
        found = self._series.get(key)
        if found is None:
            with self._lock:
                found = self._series.get(key)
                if found is None:
                    metric.check_labels(labels, series)
                    found = self._series[key] = self._family(metric, series).Metric(labels=labels)
        return found

    def _family(self, metric: Metric, series: str):
        family = self._families.get(series)
        if family is None:
            if metric.kind is Kind.HISTOGRAM:
                name, help_text = metric.histogram_series()[series[len(metric.name) :]]
                kind = pb_utils.MetricFamily.COUNTER
            else:
                name, help_text = metric.name, metric.help
                kind = pb_utils.MetricFamily.GAUGE if metric.kind is Kind.GAUGE else pb_utils.MetricFamily.COUNTER
            family = self._families[series] = pb_utils.MetricFamily(name, help_text, kind)
        return family

