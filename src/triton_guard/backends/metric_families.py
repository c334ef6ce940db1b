"""pb_utils metric families made from the catalogue (triton_guard.metrics).

Import only inside a Triton Python model. The families must outlive their
metrics (a collected family makes the next update raise): callers keep what
these return.
"""

from __future__ import annotations

import triton_python_backend_utils as pb_utils

from triton_guard.metrics import Kind, Metric


def family(metric: Metric) -> pb_utils.MetricFamily:
    """The pb_utils family of a gauge or counter."""
    kinds = {Kind.GAUGE: pb_utils.MetricFamily.GAUGE, Kind.COUNTER: pb_utils.MetricFamily.COUNTER}
    if metric.kind not in kinds:
        raise ValueError(f"{metric.name} is a {metric.kind.value}: use histogram_families")
    return pb_utils.MetricFamily(metric.name, metric.help, kinds[metric.kind])


def histogram_families(metric: Metric) -> dict[str, pb_utils.MetricFamily]:
    """A histogram's three counter families, by suffix ('_bucket', '_sum', '_count').

    pb_utils' own HISTOGRAM costs one stub-to-server round trip per
    observation; the publishers add whole batches to these counters instead.
    """
    return {
        suffix: pb_utils.MetricFamily(name, help_text, pb_utils.MetricFamily.COUNTER)
        for suffix, (name, help_text) in metric.histogram_series().items()
    }
