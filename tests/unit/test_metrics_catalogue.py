"""The metrics catalogue (triton_guard.metrics) and the publishers built on it.

The publishers import triton_python_backend_utils, so a small stand-in for its
MetricFamily records what they create; the live check of the same catalogue
against a real server's /metrics is in tests/integration/test_observability_live.py.
"""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest

from triton_guard import metrics as catalogue
from triton_guard.canary import checks, golden_check, leak, memory
from triton_guard.canary.memory import MemoryReading
from triton_guard.drift.monitor import DriftScores, Reference
from triton_guard.guard.breaker import State
from triton_guard.guard.failures import Failure
from triton_guard.metrics import ANY, Kind, Metric, Publisher

PROMETHEUS_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
PROMETHEUS_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def test_every_entry_is_a_valid_prometheus_family():
    assert len(catalogue.CATALOGUE) >= 15
    for name, metric in catalogue.CATALOGUE.items():
        assert name == metric.name and PROMETHEUS_NAME.fullmatch(name)
        assert metric.help.strip() and "\n" not in metric.help, name
        assert all(PROMETHEUS_LABEL.fullmatch(label) and not label.startswith("__") for label in metric.labels), name
        if metric.kind is Kind.COUNTER:
            assert name.endswith("_total"), f"{name}: a counter's name ends in _total"
        else:
            assert not name.endswith("_total"), name
        for values in metric.labels.values():
            assert values is None or (values and len(values) == len(set(values))), name


def test_module_constants_are_the_catalogue():
    declared = {v.name for v in vars(catalogue).values() if isinstance(v, Metric)}
    assert declared == set(catalogue.CATALOGUE)


def test_histogram_series_and_buckets():
    h = catalogue.UPSTREAM_CALL_SECONDS
    assert h.series_names == (f"{h.name}_bucket", f"{h.name}_sum", f"{h.name}_count")
    assert list(h.buckets) == sorted(h.buckets) and len(set(h.buckets)) == len(h.buckets)
    assert h.bucket_bounds[-1] == "+Inf" and len(h.bucket_bounds) == len(h.buckets) + 1
    series = h.histogram_series()
    assert [name for name, _ in series.values()] == list(h.series_names)
    assert all(h.help in text for _, text in series.values())
    with pytest.raises(ValueError, match="not a histogram"):
        catalogue.BREAKER_STATE.histogram_series()


def test_family_of_maps_samples_to_families():
    h = catalogue.UPSTREAM_CALL_SECONDS
    for series in h.series_names:
        assert catalogue.family_of(series) is h
    assert catalogue.family_of(catalogue.BREAKER_STATE.name) is catalogue.BREAKER_STATE
    assert catalogue.family_of("triton_guard_breaker_state_count") is None  # a gauge has no _count series
    assert catalogue.family_of("nv_inference_count") is None


def test_label_values_follow_the_code_that_produces_them():
    assert catalogue.BREAKER_TRANSITIONS.allowed("to") == tuple(s.name for s in State)
    assert set(catalogue.UPSTREAM_FAILURES.allowed("reason")) == {f.value for f in Failure}
    assert catalogue.BREAKER_STATE.allowed("model") is ANY


def test_canary_check_names_are_the_ones_the_checks_return():
    from triton_guard.canary.overload import OverloadJudge

    """Each check function, called with nothing to go on, still names itself."""
    produced = {
        checks.check_liveness({}).name,
        checks.metric_labels(golden_check.check_golden("add_sub", None, "no answer").name)["check"],
        golden_check.check_no_goldens().name,
        checks.check_headroom(None, 0, "unreadable").name,
        leak.check_leak_trend(leak.LeakWatch(60.0).assess(MemoryReading("host", 1, 1), 0, 900.0, 60.0, 5), 5).name,
        checks.check_stall(None, 10.0, "no metrics").name,
        checks.check_breakers([], False, 0.0).name,
        checks.check_pins({}, {}, False).name,
        checks.check_drift({}, 0.0, False).name,
        OverloadJudge().check([], {}).name,
    }
    assert produced == set(catalogue.CANARY_CHECK_OK.allowed("check"))


def test_memory_sources_are_the_ones_the_readers_return(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 1000 kB\nMemAvailable: 500 kB\n")
    (tmp_path / "memory.max").write_text("1024000\n")
    (tmp_path / "memory.current").write_text("1000\n")
    sources = {
        memory.read_host(meminfo).source,
        memory.read_cgroup(tmp_path).source,
        memory.read_gpu({"nv_gpu_memory_total_bytes": 10.0, "nv_gpu_memory_used_bytes": 1.0}).source,
    }
    assert sources == set(catalogue.MEMORY_FREE_BYTES.allowed("source"))


def test_check_labels():
    rejections = catalogue.REJECTIONS
    rejections.check_labels({"model": "anything", "reason": "open"})
    with pytest.raises(ValueError, match="reason='nope' not in"):
        rejections.check_labels({"model": "m", "reason": "nope"})
    with pytest.raises(ValueError, match="labels"):
        rejections.check_labels({"model": "m"})
    h = catalogue.UPSTREAM_CALL_SECONDS
    h.check_labels({"model": "m", "le": "+Inf"}, series=h.name + "_bucket")
    h.check_labels({"model": "m"}, series=h.name + "_sum")
    with pytest.raises(ValueError, match="le='0.3'"):
        h.check_labels({"model": "m", "le": "0.3"}, series=h.name + "_bucket")
    with pytest.raises(ValueError, match="labels"):
        h.check_labels({"model": "m", "le": "+Inf"}, series=h.name + "_count")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "guard_state"}, "named triton_guard_"),
        ({"kind": Kind.HISTOGRAM}, "buckets"),
        ({"buckets": (1.0,)}, "buckets"),
        ({"labels": {"le": ANY}}, "'le'"),
    ],
)
def test_a_bad_entry_is_refused(kwargs, message):
    entry = {"name": "triton_guard_x", "help": "x", "kind": Kind.GAUGE, "publisher": Publisher.GUARD, **kwargs}
    with pytest.raises(ValueError, match=message):
        Metric(**entry)


def test_a_family_cannot_be_declared_twice():
    with pytest.raises(ValueError, match="declared twice"):
        catalogue._declare(Metric("triton_guard_breaker_state", "again", Kind.GAUGE, Publisher.GUARD))
    # A gauge named like a histogram's series collides too.
    with pytest.raises(ValueError, match="declared twice"):
        catalogue._declare(Metric("triton_guard_upstream_call_seconds_sum", "x", Kind.GAUGE, Publisher.GUARD))
    assert catalogue.CATALOGUE["triton_guard_breaker_state"].help != "again"


def test_labels_cannot_be_changed_after_declaration():
    with pytest.raises(TypeError):
        catalogue.REJECTIONS.labels["reason"] = ("x",)


# --- the publishers, over a stand-in pb_utils -------------------------------------------


class _Family:
    GAUGE, COUNTER, HISTOGRAM = "GAUGE", "COUNTER", "HISTOGRAM"
    created: list = []

    def __init__(self, name, description, kind):
        self.name, self.description, self.kind, self.metrics = name, description, kind, []
        _Family.created.append(self)

    def Metric(self, labels):  # noqa: N802 (pb_utils' spelling)
        metric = types.SimpleNamespace(labels=dict(labels), value=None)
        metric.set = lambda v, m=metric: setattr(m, "value", v)
        metric.increment = lambda v, m=metric: setattr(m, "value", (m.value or 0) + v)
        self.metrics.append(metric)
        return metric


@pytest.fixture
def pb_utils(monkeypatch):
    fake = types.ModuleType("triton_python_backend_utils")
    fake.MetricFamily = _Family
    fake.Logger = types.SimpleNamespace(log_warn=lambda *_: None)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    for module in ("triton_guard.backends.metrics", "triton_guard.backends.drift_tap"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    _Family.created = []
    return fake


def _assert_published_as_declared(families):
    for family in families:
        metric = catalogue.family_of(family.name)
        assert metric is not None, family.name
        expected = "COUNTER" if metric.kind is not Kind.GAUGE else "GAUGE"
        assert family.kind == expected, family.name
        for m in family.metrics:
            metric.check_labels(m.labels, series=family.name)


def test_the_one_publisher_makes_families_from_the_catalogue(pb_utils):
    from triton_guard.backends.metrics import MetricsPublisher

    publisher = MetricsPublisher(model="classifier")
    publisher.set(catalogue.BREAKER_STATE, 1)
    publisher.increment(catalogue.REJECTIONS, 3, reason="open")
    publisher.increment(catalogue.REJECTIONS, 2, reason="open")
    publisher.add_observations(catalogue.UPSTREAM_CALL_SECONDS, [0.0004, 0.002, 7.0])
    families = {f.name: f for f in _Family.created}
    assert (families[catalogue.BREAKER_STATE.name].kind, families[catalogue.REJECTIONS.name].kind) == ("GAUGE", "COUNTER")
    assert families[catalogue.BREAKER_STATE.name].description == catalogue.BREAKER_STATE.help
    assert [m.value for m in families[catalogue.REJECTIONS.name].metrics] == [5]  # one series, reused
    assert set(catalogue.UPSTREAM_CALL_SECONDS.series_names) <= set(families)
    buckets = {m.labels["le"]: m.value for m in families[catalogue.UPSTREAM_CALL_SECONDS.name + "_bucket"].metrics}
    assert (buckets["0.0005"], buckets["0.0025"], buckets["10.0"], buckets["+Inf"]) == (1, 2, 3, 3)
    _assert_published_as_declared(_Family.created)
    with pytest.raises(ValueError, match="reason='sideways'"):
        publisher.increment(catalogue.REJECTIONS, 1, reason="sideways")


def test_the_drift_tap_publishes_what_the_catalogue_declares(pb_utils, tmp_path, monkeypatch):
    from triton_guard.backends import drift_tap
    from triton_guard.guard.config import DriftConfig

    monkeypatch.setattr(drift_tap, "default_state_dir", lambda: str(tmp_path / "state"))
    reference = tmp_path / "reference.json"
    reference.write_text(Reference.from_probs(np.array([[0.8, 0.2], [0.3, 0.7]])).to_json())
    tap = drift_tap.DriftTap("classifier", DriftConfig("PROBS", str(reference)), reference)
    try:
        statistics = {"chi2_p": 0.5, "ks_p": 0.4, "psi_entropy": 0.1}
        tap.publish(DriftScores("probs", 200, 200, statistics, alarm=False, reasons=()))
    finally:
        tap.close()
    published = {f.name for f in _Family.created}
    assert published == {m.name for m in catalogue.published_by(Publisher.DRIFT)}
    _assert_published_as_declared(_Family.created)
    score = next(f for f in _Family.created if f.name == catalogue.DRIFT_SCORE.name)
    assert {m.labels["statistic"]: m.value for m in score.metrics} == statistics
    assert {m.labels["model"] for f in _Family.created for m in f.metrics} == {"classifier"}
