"""Reading Triton's /metrics text the way Triton writes it."""

from triton_guard import promtext

# As Triton 2.51 exposes them: counters without the `_total` suffix.
TRITON_TEXT = """\
# HELP nv_inference_exec_count Number of model executions performed (does not include cached requests)
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="classifier",version="1"} 7
nv_inference_exec_count{model="pipeline",version="1"} 3
# HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="classifier",version="1"} 2
# HELP triton_guard_rejections_total Requests refused
# TYPE triton_guard_rejections_total counter
triton_guard_rejections_total{model="classifier",reason="open"} 4
"""


def test_a_counter_without_the_total_suffix_is_found_by_its_exposed_name():
    samples = promtext.parse(TRITON_TEXT)
    assert promtext.by_label(samples, "nv_inference_exec_count", "model") == {"classifier": 7.0, "pipeline": 3.0}


def test_gauges_and_suffixed_counters_are_found_as_named():
    samples = promtext.parse(TRITON_TEXT)
    assert promtext.by_label(samples, "nv_inference_pending_request_count", "model") == {"classifier": 2.0}
    assert promtext.by_label(samples, "triton_guard_rejections_total", "reason") == {"open": 4.0}
