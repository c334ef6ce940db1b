"""Every metric the dashboard and the alert rules name exists on a real server's /metrics.

Against the session's `pipeline_server` (the project's model repository, CPU):
a few requests through `pipeline` (the guard's histogram and the drift
monitor's gauges need answers), one canary call, then /metrics is polled
until the guards' and the drift monitor's 1 s publishers have caught up.
Names that cannot exist on a healthy CPU server are allow-listed in
tests/unit/test_observability.py, each with its reason, and checked otherwise.
"""

from __future__ import annotations

import re
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.unit.test_observability import (
    FAULT_ONLY_GUARD_METRICS,
    GPU_ONLY_TRITON_METRICS,
    HISTOGRAM_SUFFIXES,
    HISTOGRAMS,
    PROMETHEUS_SYNTHESIZED,
    declared_guard_metrics,
    referenced_families,
)
from tests.unit.test_cloudwatch import declared_metrics as cloudwatch_metrics
from triton_guard import metrics as catalogue
from triton_guard import promtext
from triton_guard_demo.digits import heldout_split, load_digits_uint8
from triton_guard.canary.probe import Health, ModelHealthValidator

pytestmark = pytest.mark.integration

REQUESTS = 8
PUBLISH_WAIT_S = 8.0  # the publishers run once a second; a loaded test machine gets some slack
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{|\s)")
_TYPE = re.compile(r"^# TYPE ([A-Za-z_:][\w:]*) (\w+)")


def _exposed_families(text: str) -> set[str]:
    """Families with at least one sample (a histogram through its _bucket/_sum/_count)."""
    types, samples = {}, set()
    for line in text.splitlines():
        if match := _TYPE.match(line):
            types[match.group(1)] = match.group(2)
        elif match := _SAMPLE.match(line):
            samples.add(match.group(1))
    families = set()
    for name, kind in types.items():
        names = {name + s for s in HISTOGRAM_SUFFIXES} if kind in ("histogram", "summary") else {name}
        if names & samples:
            families.add(name)
    # The guard writes its latency histogram as three counter series (see
    # triton_guard.metrics.UPSTREAM_CALL_SECONDS): the family is there when all three are.
    for histogram in HISTOGRAMS:
        if {histogram + suffix for suffix in HISTOGRAM_SUFFIXES} <= families:
            families.add(histogram)
    return families


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _send_traffic(grpc_url: str) -> None:
    _, _, images, _ = heldout_split(*load_digits_uint8())
    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        for i in range(REQUESTS):
            tensor = grpcclient.InferInput("IMAGE", [1, 8, 8], "UINT8")
            tensor.set_data_from_numpy(np.ascontiguousarray(images[i : i + 1]))
            result = client.infer("pipeline", [tensor])
            assert result.as_numpy("LABEL").shape == (1, 1)
    finally:
        client.close()


@pytest.fixture(scope="module")
def live_families(pipeline_server) -> tuple[set[str], set[str]]:
    """(families on /metrics once everything required is there or the wait ran out, required families)."""
    _send_traffic(pipeline_server.grpc_url)
    health = ModelHealthValidator(pipeline_server.grpc_url).check()
    assert health.health is not Health.UNREACHABLE, health.reasons

    allowed = set(FAULT_ONLY_GUARD_METRICS) | set(PROMETHEUS_SYNTHESIZED) | set(GPU_ONLY_TRITON_METRICS)
    required = referenced_families() - allowed
    deadline = time.monotonic() + PUBLISH_WAIT_S
    while True:
        exposed = _exposed_families(_scrape(pipeline_server.metrics_url))
        if required <= exposed or time.monotonic() > deadline:
            return exposed, required
        time.sleep(0.25)


def test_every_metric_the_dashboard_and_alerts_use_is_on_live_metrics(live_families):
    exposed, required = live_families
    assert required, "nothing to check"
    missing = sorted(required - exposed)
    assert not missing, f"named by the dashboard or the alert rules but not on /metrics: {missing}"


def test_gpu_only_metrics_exist_where_triton_sees_a_gpu(live_families):
    exposed, _ = live_families
    if not any(name.startswith("nv_gpu_") for name in exposed):
        pytest.skip("CPU server: Triton publishes no nv_gpu_* metrics")
    assert set(GPU_ONLY_TRITON_METRICS) <= exposed


def test_fault_only_metrics_are_the_guards_own(live_families):
    """Not required on a healthy server; they are the families the guard's publisher creates (and the canary's
    that wait for a leak trend verdict, an in-process guard on a GPU, or a leak reload)."""
    assert set(FAULT_ONLY_GUARD_METRICS) == {
        catalogue.BREAKER_TRANSITIONS.name, catalogue.REJECTIONS.name, catalogue.UPSTREAM_FAILURES.name, catalogue.STATE_DAMAGE.name,
        catalogue.INSTANCE_MEMORY_GROWTH.name, catalogue.ALLOCATOR_RETRIES.name, catalogue.ALLOCATOR_OOMS.name,
        catalogue.LEAK_RELOADS.name,
    }
    assert set(FAULT_ONLY_GUARD_METRICS) <= declared_guard_metrics()
    exposed, _ = live_families
    # Their siblings from the same publisher are on /metrics, so the publisher ran.
    assert {catalogue.BREAKER_STATE.name, catalogue.INFLIGHT_CALLS.name, catalogue.UPSTREAM_CALL_SECONDS.name} <= exposed


def test_every_triton_guard_series_is_in_the_catalogue_with_allowed_labels(live_families, pipeline_server):
    """Nothing published outside triton_guard.metrics; no label value it does not list."""
    samples = [s for s in promtext.parse(_scrape(pipeline_server.metrics_url)) if s.name.startswith("triton_guard_")]
    assert samples
    for sample in samples:
        name = sample.name
        if catalogue.family_of(name) is None and name.endswith("_total"):
            name = name[: -len("_total")]  # prometheus_client's parser names every counter sample *_total
        family = catalogue.family_of(name)
        assert family is not None, f"{sample.name} is on /metrics but not in the catalogue"
        family.check_labels(sample.labels, series=name)


def test_every_metric_cloudwatch_is_told_to_collect_is_on_live_metrics(live_families):
    """deploy/cloudwatch/cwagentconfig.json: what a healthy server can show is there."""
    exposed, _ = live_families
    expected = cloudwatch_metrics() - set(FAULT_ONLY_GUARD_METRICS)
    assert expected and not sorted(expected - exposed)


def test_prometheus_synthesized_series_are_not_exported(live_families):
    exposed, _ = live_families
    assert not set(PROMETHEUS_SYNTHESIZED) & exposed


def test_exposed_families_parser():
    text = "\n".join(
        [
            "# HELP a_seconds x",
            "# TYPE a_seconds histogram",
            'a_seconds_bucket{le="1"} 1',
            "a_seconds_count 1",
            "# TYPE b_total counter",
            "# TYPE c gauge",
            "c 1",
            "# TYPE d_count counter",
            'd_count{model="m"} 0',
        ]
    )
    assert _exposed_families(text) == {"a_seconds", "c", "d_count"}
