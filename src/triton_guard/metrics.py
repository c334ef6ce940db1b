"""Every metric triton-guard publishes on Triton's /metrics, declared once.

The publishers create their families from these entries (the guard's
runtime, the canary backend, the drift tap, all through
triton_guard.backends.metrics, the one publisher); `triton-guard status`, the dashboard
and alert tests and the CloudWatch configuration read them. Plain Python:
nothing here imports Triton.

Adding a family is one declaration below, by its publisher: `_guard(...)`,
`_canary(...)` or `_drift(...)` (name, kind, labels, help, then Metric's
other fields). A label's allowed values are listed where the code can only
publish those (ANY: open-ended, such as model and instance names).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from triton_guard.guard.breaker import State
from triton_guard.guard.failures import Failure


class Kind(str, enum.Enum):
    GAUGE = "gauge"
    COUNTER = "counter"
    # Published as its three counter series (_bucket{le}, _sum, _count): see
    # UPSTREAM_CALL_SECONDS. PromQL reads them exactly as a native histogram.
    HISTOGRAM = "histogram"


class Publisher(str, enum.Enum):
    GUARD = "guard"  # every guard instance (triton_guard.backends.bls)
    CANARY = "canary"  # the canary backend, on every run
    DRIFT = "drift"  # the drift tap (triton_guard.backends.drift_tap)


HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
ANY = None  # an open-ended label value set
Labels = Mapping[str, tuple[str, ...] | None]  # label -> its allowed values (ANY: open-ended)


@dataclass(frozen=True)
class Metric:
    name: str
    help: str
    kind: Kind
    publisher: Publisher
    labels: Labels = field(default_factory=dict)
    buckets: tuple[float, ...] = ()  # histograms only: upper bounds, +Inf implied
    # None: the series exist once the publisher has run. Otherwise the event
    # that creates the first series (a healthy server may have none).
    first_series_on: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        if not self.name.startswith("triton_guard_"):
            raise ValueError(f"{self.name}: triton-guard metrics are named triton_guard_*")
        if (self.kind is Kind.HISTOGRAM) != bool(self.buckets):
            raise ValueError(f"{self.name}: buckets go with, and only with, a histogram")
        if "le" in self.labels:
            raise ValueError(f"{self.name}: 'le' is the histogram's own label")

    @property
    def series_names(self) -> tuple[str, ...]:
        """The sample names on /metrics: a histogram's three series, else the name."""
        if self.kind is Kind.HISTOGRAM:
            return tuple(self.name + suffix for suffix in HISTOGRAM_SUFFIXES)
        return (self.name,)

    @property
    def bucket_bounds(self) -> tuple[str, ...]:
        """The `le` values of a histogram's _bucket series, +Inf last."""
        return tuple(str(b) for b in self.buckets) + ("+Inf",)

    def histogram_series(self) -> dict[str, tuple[str, str]]:
        """suffix ('_bucket', '_sum', '_count') -> (counter name, help) for a histogram."""
        if self.kind is not Kind.HISTOGRAM:
            raise ValueError(f"{self.name} is a {self.kind.value}, not a histogram")
        return {
            "_bucket": (self.name + "_bucket", f"{self.help}: observations no greater than le"),
            "_sum": (self.name + "_sum", f"{self.help}: sum of the observations"),
            "_count": (self.name + "_count", f"{self.help}: number of observations"),
        }

    def allowed(self, label: str) -> tuple[str, ...] | None:
        return self.labels[label]

    def check_labels(self, labels: Mapping[str, str], series: str | None = None) -> None:
        """Raises ValueError unless `labels` are this family's, with allowed values.

        `series` is the sample name (a histogram's _bucket series carries `le`).
        """
        expected = set(self.labels) | ({"le"} if series == self.name + "_bucket" else set())
        if set(labels) != expected:
            raise ValueError(f"{self.name}: labels {sorted(labels)}, expected {sorted(expected)}")
        for label, value in labels.items():
            if label == "le":
                if value not in self.bucket_bounds:
                    raise ValueError(f"{self.name}: le={value!r} is not one of its buckets")
                continue
            allowed = self.labels[label]
            if allowed is not None and value not in allowed:
                raise ValueError(f"{self.name}: {label}={value!r} not in {list(allowed)}")


_CATALOGUE: dict[str, Metric] = {}


def _declare(metric: Metric) -> Metric:
    taken = {n for m in _CATALOGUE.values() for n in (m.name, *m.series_names)}
    if taken & {metric.name, *metric.series_names}:
        raise ValueError(f"{metric.name} is declared twice")
    _CATALOGUE[metric.name] = metric
    return metric


def _declarer(publisher: Publisher) -> Callable[..., Metric]:
    """`declare(name, kind, labels, help, **Metric's other fields)`: one family of `publisher`, into the catalogue."""

    def declare(name: str, kind: Kind, labels: Labels, help: str, **more: Any) -> Metric:
        return _declare(Metric(name, help, kind, publisher, labels, **more))

    return declare


_guard, _canary, _drift = _declarer(Publisher.GUARD), _declarer(Publisher.CANARY), _declarer(Publisher.DRIFT)

# Label sets many families share.
_NONE: Labels = {}
_BY_MODEL: Labels = {"model": ANY}
_BY_INSTANCE: Labels = {"model": ANY, "instance": ANY}

# --- the guard ---------------------------------------------------------------

BREAKER_STATE = _guard("triton_guard_breaker_state", Kind.GAUGE, _BY_MODEL, "Breaker state: 0 CLOSED, 1 OPEN, 2 HALF_OPEN")
BREAKER_OVERRIDE = _guard(
    "triton_guard_breaker_override", Kind.GAUGE, _BY_MODEL,
    "An operator's override of the breaker (triton-guard breaker): 0 none (auto), 1 forced OPEN, 2 forced CLOSED")
BREAKER_TRANSITIONS = _guard(
    "triton_guard_breaker_transitions_total", Kind.COUNTER, {"model": ANY, "to": tuple(s.name for s in State)},
    "Breaker transitions, by state entered", first_series_on="the first breaker transition")
# open, half_open_full: the breaker; forced_open: an operator's override; overloaded: the bulkhead;
# deadline: the request's deadline passed while it queued before the guard.
REJECTIONS = _guard(
    "triton_guard_rejections_total", Kind.COUNTER,
    {"model": ANY, "reason": ("open", "half_open_full", "forced_open", "overloaded", "deadline")},
    "Requests refused without an upstream call, by reason",
    first_series_on="the first rejection (breaker open, bulkhead full, deadline passed)")
UPSTREAM_FAILURES = _guard(
    "triton_guard_upstream_failures_total", Kind.COUNTER, {"model": ANY, "reason": tuple(f.value for f in Failure)},
    "Requests whose upstream call failed (one per request it carried), by reason",
    first_series_on="the first failed upstream call")
INFLIGHT_CALLS = _guard(
    "triton_guard_inflight_calls", Kind.GAUGE, _BY_INSTANCE, "Upstream calls not yet answered (timed-out ones included)")
UPSTREAM_CALL_SECONDS = _guard(
    "triton_guard_upstream_call_seconds", Kind.HISTOGRAM, _BY_MODEL, "Seconds per upstream call",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
STATE_DAMAGE = _guard(
    "triton_guard_state_damage_total", Kind.COUNTER,
    {"model": ANY, "kind": ("missing", "replaced", "truncated", "corrupt", "unusable")},
    "Breaker state file damage found and repaired, by kind (triton_guard.guard.shared_state)",
    first_series_on="the first damage to a breaker's state file")

# --- the canary ----------------------------------------------------------------

CANARY_CHECKS = ("golden", "liveness", "headroom", "leak_trend", "stall", "breakers", "runtime_pins", "drift", "overload")

CANARY_READY = _canary("triton_guard_canary_ready", Kind.GAUGE, _NONE, "1 when the last canary run found the server ready")
CANARY_CHECK_OK = _canary(
    "triton_guard_canary_check_ok", Kind.GAUGE, {"check": CANARY_CHECKS, "model": ANY},  # model: empty but for goldens
    "1 when the canary check passed, by check (golden: one per model with goldens, by model)")
MEMORY_FREE_BYTES = _canary(
    "triton_guard_memory_free_bytes", Kind.GAUGE, {"source": ("gpu", "cgroup", "host")},
    "Free memory where it binds (gpu, cgroup or host)")
MEMORY_FLOOR_BYTES = _canary("triton_guard_memory_floor_bytes", Kind.GAUGE, _NONE, "The headroom floor")
MEMORY_SECONDS_TO_FLOOR = _canary(
    "triton_guard_memory_seconds_to_floor", Kind.GAUGE, _NONE,
    "Projected seconds until free memory reaches the floor (+Inf: not falling)")
# Never part of readiness: overload is not a fault (triton_guard/canary/overload.py).
CANARY_OVERLOADED = _canary(
    "triton_guard_canary_overloaded", Kind.GAUGE, _NONE,
    "1 when the last canary run found the server overloaded (goldens shed or late for load while the "
    "models answer, guard load rejections, or a backlog above one round of a model's instances)")
CANARY_RUN_SECONDS = _canary("triton_guard_canary_run_seconds", Kind.GAUGE, _NONE, "Duration of the last canary run")

# Memory per model instance (canary/instances.py, canary/leak.py): one row per Python backend stub and one
# for the server process itself (model and instance "tritonserver": C++ backends live in it).
# host: resident memory (/proc); gpu: device memory (NVML, GPU hosts); gpu_*: torch's CUDA allocator as a
# model on a GPU instance reports it (canary/allocator.py).
INSTANCE_MEMORY_KINDS = ("host", "gpu", "gpu_allocated", "gpu_reserved", "gpu_reserved_unallocated")
INSTANCE_MEMORY_BYTES = _canary(
    "triton_guard_instance_memory_bytes", Kind.GAUGE, {**_BY_INSTANCE, "kind": INSTANCE_MEMORY_KINDS},
    "Memory a model instance holds, by kind (host resident, GPU, and torch's allocator on GPU)")
INSTANCE_MEMORY_GROWTH = _canary(
    "triton_guard_instance_memory_growth_bytes_per_second", Kind.GAUGE, _BY_INSTANCE,
    "Recent growth of a model instance's memory (GPU on a GPU host, else host), from the leak trend",
    first_series_on="the leak trend's first verdict (samples spanning trend_min_span_s)")
INSTANCE_SECONDS_TO_FLOOR = _canary(
    "triton_guard_instance_memory_seconds_to_floor", Kind.GAUGE, _BY_INSTANCE,
    "Projected seconds until free memory reaches the floor at this instance's rate (+Inf unless it grows steadily)")
_REPORTING_ALLOCATOR = "a model on a GPU instance reporting torch's allocator (canary/allocator.py)"
ALLOCATOR_RETRIES = _canary(
    "triton_guard_allocator_retries_total", Kind.COUNTER, _BY_INSTANCE,
    "Allocations torch's CUDA allocator retried after emptying its cache (out of device memory), by instance",
    first_series_on=_REPORTING_ALLOCATOR)
ALLOCATOR_OOMS = _canary(
    "triton_guard_allocator_ooms_total", Kind.COUNTER, _BY_INSTANCE,
    "Out-of-memory errors torch's CUDA allocator raised, by instance", first_series_on=_REPORTING_ALLOCATOR)
LEAK_RELOADS = _canary(
    "triton_guard_leak_reloads_total", Kind.COUNTER, {"model": ANY, "result": ("reloaded", "skipped", "failed")},
    "Reloads of a model whose instance leaked (canary parameter leak_reload), by result",
    first_series_on="the first leak reload (canary parameter leak_reload on)")

# --- the drift monitor ------------------------------------------------------------

# One series per monitored model (the guard's upstream): `model` is open-ended.
DRIFT_STATISTICS = ("chi2_p", "ks_p", "psi_entropy", "ks_mean_p", "ks_spread_p", "psi_mean")  # probs, then values
DRIFT_SCORE = _drift(
    "triton_guard_drift_score", Kind.GAUGE, {"model": ANY, "statistic": DRIFT_STATISTICS},
    "Drift statistic of the model's output window, by model and statistic")
DRIFT_WINDOW_FILL = _drift(
    "triton_guard_drift_window_fill", Kind.GAUGE, _BY_MODEL, "Fraction of the model's drift window filled")
DRIFT_ALARM = _drift(
    "triton_guard_drift_alarm", Kind.GAUGE, _BY_MODEL, "1 while the model's output distribution has drifted")

CATALOGUE: Mapping[str, Metric] = MappingProxyType(_CATALOGUE)


def family_of(series: str) -> Metric | None:
    """The family a sample name belongs to (a histogram's _bucket/_sum/_count too), or None."""
    if series in CATALOGUE:
        return CATALOGUE[series]
    for suffix in HISTOGRAM_SUFFIXES:
        base = series[: -len(suffix)] if series.endswith(suffix) else None
        if base in CATALOGUE and CATALOGUE[base].kind is Kind.HISTOGRAM:
            return CATALOGUE[base]
    return None


def published_by(publisher: Publisher) -> tuple[Metric, ...]:
    return tuple(m for m in CATALOGUE.values() if m.publisher is publisher)

