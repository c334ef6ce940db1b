"""triton_guard.status: where /metrics is read from, breakers without the canary, per-model golden checks."""

from __future__ import annotations

from triton_guard import promtext, status
from triton_guard.canary.report import CanaryReport, CheckResult
from triton_guard.canary.probe import Health, HealthResult
from triton_guard import metrics as catalogue

STATE, FAILURES = catalogue.BREAKER_STATE.name, catalogue.UPSTREAM_FAILURES.name
GAUGES = f"""\
# TYPE {STATE} gauge
{STATE}{{model="add_sub"}} 1
{STATE}{{model="tokenize"}} 0
# TYPE {FAILURES} counter
{FAILURES}{{model="add_sub",reason="timeout"}} 5
"""


def test_metrics_url_takes_the_port_the_canary_reports_on_the_urls_host():
    assert promtext.metrics_url_for("db-host:8001", "http://localhost:9102/metrics") == "http://db-host:9102/metrics"


def test_metrics_url_without_a_report_is_the_default_port():
    assert promtext.metrics_url_for("db-host:8001") == "http://db-host:8002/metrics"
    assert promtext.metrics_url_for("db-host:8001", "not a url:x") == "http://db-host:8002/metrics"


def test_breaker_state_comes_from_the_gauge_too():
    guards = status.guard_counters(promtext.parse(GAUGES))
    assert guards["add_sub"]["state"] == "OPEN" and guards["tokenize"]["state"] == "CLOSED"
    assert guards["add_sub"]["failures"] == {"timeout": 5.0}


def _status(report, guards, health=Health.NOT_READY, reasons=()):
    return {"url": "h:8001", "at": 0.0, "health": health.value, "reasons": list(reasons),
            "report": report.to_dict() if report else None, "guards": guards, "metrics_error": None}


def test_without_the_canary_breakers_show_their_state_from_metrics():
    guards = status.guard_counters(promtext.parse(GAUGES))
    text = status.render(_status(None, guards, reasons=["canary: Request for unknown model: 'canary' is not found"]))
    line = next(line for line in text.splitlines() if line.strip().startswith("add_sub"))
    assert "OPEN" in line and "?" not in line.split("for")[0]
    assert "timeout=5" in text
    assert "Canary: no report" in text and "'canary' is not found" in text


def test_golden_checks_are_listed_by_model_with_the_notes():
    checks = [CheckResult("golden:add_then_scale", False, None, None, "case 'c': SCALED_SUM differs by 2 at [0]"),
              CheckResult("liveness", True, {}, None, "4 models ready")]
    report = CanaryReport(checks, 0.01, "cpu", at=0.0, notes=["a note"])
    text = status.render(_status(report, {}))
    assert "FAIL golden:add_then_scale case 'c': SCALED_SUM differs by 2 at [0]" in text
    assert "ok   liveness" in text and "note: a note" in text


def test_gather_reads_metrics_where_the_canary_says_the_server_serves_them(monkeypatch):
    report = CanaryReport([], 0.01, "cpu", at=0.0, metrics_url="http://localhost:9102/metrics")
    fetched = []

    class Validator:
        def __init__(self, url, timeout_s):
            pass

        def check(self):
            return HealthResult(Health.READY, [], report)

    monkeypatch.setattr(status, "ModelHealthValidator", Validator)
    monkeypatch.setattr(status.promtext, "fetch", lambda url, timeout_s: fetched.append(url) or promtext.parse(GAUGES))
    gathered = status.gather("db-host:8001", None, 1.0)
    assert fetched == ["http://db-host:9102/metrics"]
    assert gathered["guards"]["add_sub"]["state"] == "OPEN"
    status.gather("db-host:8001", "http://elsewhere:1/metrics", 1.0)
    assert fetched[-1] == "http://elsewhere:1/metrics"


def test_an_overloaded_but_ready_server_says_both_in_the_header_and_the_check_says_why():
    from triton_guard.canary.overload import OverloadJudge

    judge = OverloadJudge()
    busy = CheckResult("overload", True, {"overloaded": True}, None,
                       "OVERLOADED: the guard of 'classifier' refused 12 requests for load (reported only: load is not a fault)")
    for overload, header in ((busy, "READY  (OVERLOADED)"), (judge.check([], {}), "READY")):
        report = CanaryReport([CheckResult("liveness", True, {}, None, "4 models ready"), overload], 0.01, "cpu", at=0.0)
        first, *rest = status.render(_status(report, {}, health=Health.READY)).splitlines()
        assert first.endswith(header)
        assert any(line.strip().startswith("ok   overload") and overload.reason in line for line in rest)


def _instance(instance, rate, steady=False, to_floor=None, growing_for=None, model="classifier", pid=4100):
    return {"model": model, "instance": instance, "pid": pid, "device": "cpu", "kind": "host", "bytes": 400 * 2**20,
            "host_bytes": 400 * 2**20, "gpu_bytes": None, "rate_bytes_per_s": rate, "growing_for_s": growing_for,
            "steady": steady, "seconds_to_floor": to_floor}


def test_the_top_instances_by_growth_with_the_leaking_one_first_and_named():
    mb_per_min = 2**20 / 60
    rows = [_instance(f"other_0_{i}", (6 - i) * mb_per_min, model="other") for i in range(6)]
    rows.insert(3, _instance("classifier_0_1", 38 * mb_per_min, steady=True, to_floor=660.0, growing_for=360.0, pid=4102))
    rows.append(_instance("late_0_0", None, model="late"))
    trend = {"instances": rows, "blamed": ["classifier_0_1"], "at_risk": [],
             "reloading": {"classifier": "reloading model 'classifier' (...)"}, "note": "per-instance GPU memory needs X"}
    checks = [CheckResult("headroom", True, {"source": "host", "free_bytes": 2**33, "total_bytes": 2**34},
                          {"floor_bytes": 2**30}, "ok"),
              CheckResult("leak_trend", False, trend, {}, "classifier instance classifier_0_1 ...")]
    lines = status.render(_status(CanaryReport(checks, 0.01, "cpu", at=0.0), {})).splitlines()
    start = lines.index("Instances (memory, fastest growing first; 8 in all)")
    shown = lines[start + 1:start + 1 + status.TOP_INSTANCES]
    assert shown[0].split()[:4] == ["classifier_0_1", "classifier", "pid", "4102"]
    assert "+38 MB/min for 6 min" in shown[0] and shown[0].endswith("LEAKING")
    assert [line.split()[0] for line in shown[1:]] == ["other_0_0", "other_0_1", "other_0_2", "other_0_3"]
    assert "+6.0 MB/min, not steady" in shown[1]
    assert "late_0_0" not in "\n".join(lines)  # beyond the top five
    assert lines[start + 1 + status.TOP_INSTANCES] == "  reloading classifier: reloading model 'classifier' (...)"
    assert lines[-1] == "  note: per-instance GPU memory needs X"


def test_no_instance_section_without_rows():
    assert status.instance_lines({}) == [] and status.instance_lines({"instances": []}) == []
