"""triton_guard.canary.report: ready as the AND of the checks, and the report as standard JSON, out and in."""

from __future__ import annotations

import json
import math

import numpy as np

from triton_guard.canary.checks import not_run
from triton_guard.canary.report import CanaryReport, CheckResult


# --- report -------------------------------------------------------------------------


def _checks() -> list[CheckResult]:
    return [
        CheckResult("liveness", True, {"pipeline": True}, "all ready", "1 models ready"),
        CheckResult("leak_trend", True, {"slope_bytes_per_s": 0.0, "seconds_to_floor": None, "samples": 12},
                    {"horizon_s": 900.0}, "free memory not falling (+0.00 MiB/s)"),
        CheckResult("stall", True, {}, {"stall_s": 10.0}, "no model stalled"),
    ]


def test_report_ready_is_the_and_of_its_checks():
    report = CanaryReport(_checks(), 0.01, "cpu", at=1.0)
    assert report.ready and report.failed == []
    bad = [not_run("golden", "deadline"), CheckResult("headroom", False, None, 0, "memory could not be read")]
    report = CanaryReport(_checks()[:1] + bad + _checks()[1:], 0.01, "cpu", at=1.0)
    assert not report.ready
    assert [c.name for c in report.failed] == ["golden", "headroom"]
    assert report.failed[0].reason == "not run: deadline"


def _strict_json(text: str):
    """json.loads that refuses NaN / Infinity, as jq, Go and JavaScript do."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_report_round_trips_through_json():
    report = CanaryReport(_checks() + [not_run("golden", "x")], 0.125, "gpu", at=1_700_000_000.5,
                          notes=["a note"], metrics_url="http://localhost:9102/metrics")
    data = _strict_json(report.to_json())
    assert data["ready"] is False and data["device_class"] == "gpu"
    back = CanaryReport.from_dict(data)
    assert back == report
    assert not back.ready and [c.name for c in back.failed] == ["golden"]


def test_report_with_nan_and_inf_measurements_is_standard_json():
    checks = [
        CheckResult("golden:m", False, {"case": {"outputs": {"Y": {"max_abs_diff": float("nan")}}}},
                    {"tolerance": math.inf}, "Y is not finite (NaN or inf)"),
        CheckResult("x", True, [np.float32("inf"), np.float64("-inf"), np.int64(3), np.bool_(True)], None, "r"),
    ]
    text = CanaryReport(checks, 0.1, "cpu", at=1.0).to_json()
    assert ": NaN" not in text and "Infinity" not in text
    data = _strict_json(text)
    assert data["checks"][0]["value"] == {"case": {"outputs": {"Y": {"max_abs_diff": None}}}}
    assert data["checks"][0]["limit"] == {"tolerance": None}
    assert data["checks"][1]["value"] == [None, None, 3, True]


def test_report_from_an_older_canary_without_notes_reads():
    data = _strict_json(CanaryReport(_checks(), 0.1, "cpu", at=1.0).to_json())
    del data["notes"], data["metrics_url"]
    back = CanaryReport.from_dict(data)
    assert back.notes == [] and back.metrics_url is None
