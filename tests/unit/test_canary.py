"""triton_guard.canary.checks: configuration, every check's verdict, the stall detector and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from triton_guard import defaults
from triton_guard.guard.breaker import BreakerSnapshot, State
from triton_guard.canary.checks import (
    CanaryConfig,
    CanaryConfigError,
    CanaryReport,
    CheckResult,
    StallDetector,
    check_breakers,
    check_golden,
    check_headroom,
    check_liveness,
    check_pins,
    check_stall,
    check_trend,
    expected_runtime,
    not_run,
)
from triton_guard.canary.goldens import GoldenCase, compare_case, record_case
from triton_guard.canary.memory import MemoryReading, Trend
from triton_guard.pins import load_pins

MIB = 1024 * 1024
PINS = load_pins()
DEMO_GOLDENS = Path(__file__).resolve().parents[2] / "model_repository" / "pipeline" / "goldens" / "digits.golden.json"


# --- configuration ------------------------------------------------------------------


def test_defaults_come_from_defaults_module():
    config = CanaryConfig()
    assert config.models == defaults.CANARY_MODELS == ()  # every model the server has loaded
    assert config.deadline_ms == defaults.CANARY_DEADLINE_MS
    assert config.interval_ms == defaults.CANARY_INTERVAL_MS
    assert config.sample_interval_ms == defaults.CANARY_SAMPLE_INTERVAL_MS
    assert config.headroom_floor_fraction == defaults.HEADROOM_FLOOR_FRACTION
    assert config.headroom_floor_mb == defaults.HEADROOM_FLOOR_MB
    assert config.trend_window_s == defaults.TREND_WINDOW_S
    assert config.trend_min_samples == defaults.TREND_MIN_SAMPLES
    assert config.trend_min_span_s == defaults.TREND_MIN_SPAN_S
    assert config.trend_horizon_s == defaults.TREND_HORIZON_S
    assert config.stall_s == defaults.STALL_S
    assert config.half_open_not_ready is defaults.HALF_OPEN_NOT_READY
    assert config.strict_pins is defaults.STRICT_PINS
    assert config.drift_fails_readiness is defaults.DRIFT_FAILS_READINESS
    assert config.device_class == "auto"


@pytest.mark.parametrize("word", ["1", "true", "True", "YES", "on", " On "])
def test_bool_words_true(word):
    assert CanaryConfig.from_parameters({"strict_pins": word}).strict_pins is True


@pytest.mark.parametrize("word", ["0", "false", "FALSE", "no", "off", " Off "])
def test_bool_words_false(word):
    base = CanaryConfig(half_open_not_ready=True)
    assert CanaryConfig.from_parameters({"half_open_not_ready": word}, base=base).half_open_not_ready is False


def test_json_booleans_pass_through():
    config = CanaryConfig.from_parameters({"strict_pins": True, "half_open_not_ready": True})
    assert config.strict_pins is True and config.half_open_not_ready is True


def test_parses_every_type():
    config = CanaryConfig.from_parameters(
        {
            "models": " pipeline_inline, preprocess_guarded ,,postprocess, ",
            "deadline_ms": "1500",
            "interval_ms": "5000",
            "sample_interval_ms": " 250 ",
            "headroom_floor_fraction": "0.25",
            "headroom_floor_mb": "512",
            "trend_window_s": "120",
            "trend_min_samples": "5",
            "trend_min_span_s": "30",
            "trend_horizon_s": "120.5",
            "stall_s": "3",
            "device_class": "gpu",
            "drift_fails_readiness": "yes",
        }
    )
    assert config == CanaryConfig(
        models=("pipeline_inline", "preprocess_guarded", "postprocess"),
        deadline_ms=1500,
        interval_ms=5000,
        sample_interval_ms=250,
        headroom_floor_fraction=0.25,
        headroom_floor_mb=512.0,
        trend_window_s=120.0,
        trend_min_samples=5,
        trend_min_span_s=30.0,
        trend_horizon_s=120.5,
        stall_s=3.0,
        device_class="gpu",
        drift_fails_readiness=True,
    )
    assert type(config.deadline_ms) is int and type(config.trend_window_s) is float
    assert type(config.headroom_floor_mb) is float and type(config.trend_min_samples) is int


def test_no_parameters_keep_the_base():
    base = CanaryConfig(stall_s=2.0, models=("a",))
    assert CanaryConfig.from_parameters({}, base=base) == base


@pytest.mark.parametrize(
    "name, raw",
    [
        ("deadline_ms", "fast"),
        ("deadline_ms", "1.5"),
        ("deadline_ms", "0"),
        ("deadline_ms", "-100"),
        ("interval_ms", "0"),
        ("sample_interval_ms", "never"),
        ("headroom_floor_fraction", "1"),
        ("headroom_floor_fraction", "-0.1"),
        ("headroom_floor_fraction", "nan"),
        ("headroom_floor_fraction", "ten percent"),
        ("headroom_floor_mb", "-1"),
        ("headroom_floor_mb", "nan"),
        ("headroom_floor_mb", "inf"),
        ("headroom_floor_mb", "lots"),
        ("trend_window_s", "0"),
        ("trend_window_s", "inf"),
        ("trend_min_span_s", "-1"),
        ("trend_min_span_s", "nan"),
        ("trend_min_span_s", "inf"),
        ("trend_min_span_s", "300"),  # = the default window: the samples could never span it
        ("trend_min_samples", "2"),
        ("trend_min_samples", "ten"),
        ("trend_horizon_s", "nan"),
        ("trend_horizon_s", "-900"),
        ("stall_s", "0"),
        ("half_open_not_ready", "maybe"),
        ("strict_pins", "2"),
        ("drift_fails_readiness", "sometimes"),
        ("device_class", "tpu"),
    ],
)
def test_invalid_values_raise_naming_the_parameter(name, raw):
    with pytest.raises(CanaryConfigError, match=name):
        CanaryConfig.from_parameters({name: raw})


def test_min_span_just_inside_the_window_is_accepted():
    config = CanaryConfig.from_parameters({"trend_window_s": "100", "trend_min_span_s": "99.5"})
    assert (config.trend_window_s, config.trend_min_span_s) == (100.0, 99.5)
    with pytest.raises(CanaryConfigError, match="trend_min_span_s"):
        CanaryConfig.from_parameters({"trend_window_s": "30"})  # below the default span of 60 s


def test_config_error_is_a_value_error():
    assert issubclass(CanaryConfigError, ValueError)


def test_unknown_parameter_raises():
    with pytest.raises(CanaryConfigError, match="unknown canary parameter 'deadline'"):
        CanaryConfig.from_parameters({"deadline": "100"})


def test_call_options_change_only_the_given_thresholds():
    base = CanaryConfig(models=("pipeline_inline",), stall_s=4.0)
    config = base.with_call_options({"strict_pins": True, "deadline_ms": "500", "headroom_floor_mb": 64})
    assert config == CanaryConfig(
        models=("pipeline_inline",), stall_s=4.0,
        strict_pins=True, deadline_ms=500, headroom_floor_mb=64.0,
    )
    assert base.with_call_options({}) == base


@pytest.mark.parametrize("option", ["models", "interval_ms", "trend_window_s", "device_class", "bogus"])
def test_call_options_refuse_what_is_not_per_call(option):
    with pytest.raises(CanaryConfigError, match=option):
        CanaryConfig().with_call_options({option: "x"})


def test_every_per_call_option_is_accepted():
    values = {
        "deadline_ms": "700", "headroom_floor_fraction": "0.3", "headroom_floor_mb": "1",
        "trend_horizon_s": "60", "stall_s": "1", "half_open_not_ready": "yes", "strict_pins": "on",
    }
    assert set(values) <= CanaryConfig.PER_CALL
    # What is checked (models, pipeline, device) and the sampling itself are never per call.
    assert CanaryConfig.PER_CALL.isdisjoint(
        {"models", "device_class", "interval_ms", "sample_interval_ms", "trend_window_s", "trend_min_samples"}
    )
    config = CanaryConfig().with_call_options(values)
    assert (config.deadline_ms, config.headroom_floor_fraction, config.headroom_floor_mb) == (700, 0.3, 1.0)
    assert (config.trend_horizon_s, config.stall_s, config.half_open_not_ready, config.strict_pins) == (60.0, 1.0, True, True)


def test_per_call_options_are_validated_too():
    with pytest.raises(CanaryConfigError, match="stall_s"):
        CanaryConfig().with_call_options({"stall_s": "-1"})


# --- liveness, golden, headroom, trend ---------------------------------------------


def test_liveness_all_ready():
    result = check_liveness({"pipeline": True, "classifier": True})
    assert result.ok and result.name == "liveness"
    assert result.reason == "2 models ready"


def test_liveness_names_the_models_not_ready():
    result = check_liveness({"pipeline": True, "postprocess": False, "classifier": False})
    assert not result.ok
    assert result.reason == "not ready: classifier, postprocess"
    assert result.value == {"pipeline": True, "postprocess": False, "classifier": False}


def test_liveness_says_why_a_model_is_not_ready():
    result = check_liveness({"a": True, "b": False}, {"b": "UNAVAILABLE: failed to load"})
    assert result.reason == "not ready: b (UNAVAILABLE: failed to load)"


def _case() -> GoldenCase:
    answer = {"LABEL": np.array([[1]], dtype=np.int64), "PROBS": np.eye(1, 10, 1, dtype=np.float32)}
    return record_case("pipeline", "one", {"IMAGE": np.zeros((1, 8, 8), np.uint8)}, answer, answer,
                       "cpu", {}, 1e-4, {})


def test_golden_without_an_answer_fails_with_the_error_and_is_named_by_its_model():
    result = check_golden("pipeline", None, "no answer from 'pipeline' within the 2000 ms deadline")
    assert not result.ok and result.value is None and result.name == "golden:pipeline"
    assert result.reason == "no answer from 'pipeline' within the 2000 ms deadline"
    assert check_golden("m", None).reason == "no answer"


def test_golden_bit_exact_passes():
    case = _case()
    answer = {n: o.value for n, o in case.expected["cpu"].outputs.items()}
    result = check_golden("pipeline", [compare_case(case, "cpu", answer)])
    assert result.ok and result.reason == "case 'one': bit-exact"
    assert result.value == {"one": {"bit_exact": True, "outputs": {
        "LABEL": {"ok": True, "max_abs_diff": None}, "PROBS": {"ok": True, "max_abs_diff": 0.0}}}}
    assert result.limit == {"tolerance": {"one": {"LABEL": 0.0, "PROBS": 1e-4}}}


def test_golden_wrong_label_fails_naming_the_output():
    case = _case()
    answer = {"LABEL": np.array([[7]], dtype=np.int64), "PROBS": case.expected["cpu"].outputs["PROBS"].value}
    result = check_golden("pipeline", [compare_case(case, "cpu", answer)])
    assert not result.ok and result.name == "golden:pipeline"
    assert result.reason.startswith("case 'one': LABEL differs in 1 of 1 values (first at [0, 0]: 7, golden 1)")
    assert result.value["one"]["outputs"]["LABEL"]["ok"] is False


def test_headroom_boundary_is_exactly_the_floor():
    floor = 100 * MIB
    at_floor = check_headroom(MemoryReading("host", 1000 * MIB, floor), floor)
    assert at_floor.ok
    assert at_floor.reason == "host memory free 100 MiB (>= floor 100 MiB of 1000 MiB)"
    below = check_headroom(MemoryReading("host", 1000 * MIB, floor - 1), floor)
    assert not below.ok
    assert "<" in below.reason and ">=" not in below.reason
    assert below.value == {"source": "host", "free_bytes": floor - 1, "total_bytes": 1000 * MIB}
    assert below.limit == {"floor_bytes": floor}


def test_headroom_without_a_reading_fails_with_the_error():
    result = check_headroom(None, 0, "GPU memory unknown: server metrics unavailable")
    assert not result.ok and result.reason == "GPU memory unknown: server metrics unavailable"
    assert check_headroom(None, 0).reason == "memory could not be read"


def test_trend_without_enough_samples_passes_while_collecting():
    result = check_trend(None, 900.0, samples=3, min_samples=10, min_span_s=60.0)
    assert result.ok and result.name == "leak_trend"
    assert result.reason.startswith("collecting samples (3 ")
    assert "10" in result.reason and "60 s" in result.reason
    assert result.value == {"samples": 3}


def test_trend_while_collecting_says_how_long_the_samples_span():
    result = check_trend(None, 900.0, samples=50, min_samples=10, min_span_s=60.0, span_s=49.2)
    assert result.reason == "collecting samples (50 of at least 10, 49 s of at least 60 s)"


def test_trend_reaching_the_floor_within_the_horizon_fails():
    trend = Trend(samples=12, slope_bytes_per_s=-2 * MIB, seconds_to_floor=300.0)
    result = check_trend(trend, 900.0, samples=12, min_samples=10)
    assert not result.ok
    assert "2.00 MiB/s" in result.reason and "300 s" in result.reason and "< horizon 900 s" in result.reason


def test_trend_boundary_is_the_horizon():
    assert check_trend(Trend(10, -MIB, 900.0), 900.0, 10, 10).ok
    assert not check_trend(Trend(10, -MIB, 899.9), 900.0, 10, 10).ok


def test_trend_not_falling_passes():
    result = check_trend(Trend(10, 0.5 * MIB, math.inf), 900.0, 10, 10)
    assert result.ok and result.reason == "free memory not falling (+0.50 MiB/s)"
    assert result.value["seconds_to_floor"] is None  # "never", as standard JSON (no Infinity)
    assert "Infinity" not in json.dumps(result.value)


# --- stall --------------------------------------------------------------------------


def test_stalled_after_stall_s_without_progress():
    detector = StallDetector()
    detector.update(100.0, {"classifier": 3}, {"classifier": 42})
    detector.update(104.0, {"classifier": 3}, {"classifier": 42})
    assert detector.stalled(109.5, 10.0, {"classifier": 3}) == {}  # just below stall_s
    assert detector.stalled(110.0, 10.0, {"classifier": 3}) == {"classifier": 10.0}
    assert detector.stalled(117.0, 10.0, {"classifier": 3}) == {"classifier": 17.0}


def test_progress_resets_the_stall_clock():
    detector = StallDetector()
    detector.update(0.0, {"m": 1}, {"m": 5})
    detector.update(6.0, {"m": 1}, {"m": 6})  # one inference completed
    assert detector.stalled(15.0, 10.0, {"m": 1}) == {}
    assert detector.stalled(16.0, 10.0, {"m": 1}) == {"m": 10.0}


def test_nothing_pending_resets_the_stall_clock():
    detector = StallDetector()
    detector.update(0.0, {"m": 2}, {"m": 5})
    detector.update(5.0, {"m": 0}, {"m": 5})  # idle, not stuck
    detector.update(7.0, {"m": 2}, {"m": 5})
    assert detector.stalled(14.0, 10.0, {"m": 2}) == {}
    assert detector.stalled(15.0, 10.0, {"m": 2}) == {"m": 10.0}


def test_not_stalled_when_nothing_is_pending_now():
    detector = StallDetector()
    detector.update(0.0, {"m": 2}, {"m": 5})
    assert detector.stalled(60.0, 10.0, {"m": 0}) == {}
    assert detector.stalled(60.0, 10.0, {}) == {}


def test_stall_is_per_model():
    detector = StallDetector()
    detector.update(0.0, {"a": 1, "b": 1}, {"a": 1, "b": 1})
    detector.update(8.0, {"a": 1, "b": 1}, {"a": 1, "b": 2})
    assert detector.stalled(12.0, 10.0, {"a": 1, "b": 1}) == {"a": 12.0}


def test_check_stall_verdicts():
    assert check_stall({}, 10.0) == CheckResult("stall", True, {}, {"stall_s": 10.0}, "no model stalled")
    stalled = check_stall({"classifier": 12.0}, 10.0)
    assert not stalled.ok and stalled.value == {"classifier": 12.0}
    assert stalled.reason == "requests pending, nothing completed: classifier (12 s)"
    unknown = check_stall(None, 10.0, "metrics unavailable: refused")
    assert not unknown.ok and unknown.reason == "metrics unavailable: refused"


# --- breakers -----------------------------------------------------------------------


def snapshot(name: str, state: State, since: float = 0.0, **overrides) -> BreakerSnapshot:
    fields = dict(
        name=name, state=state, since=since, opened_at=0.0, consecutive_failures=0, calls_in_window=0,
        failure_rate=0.0, slow_call_rate=0.0, trials_in_flight=0, generation=1, transitions=0,
    )
    fields.update(overrides)
    return BreakerSnapshot(**fields)


def test_open_breaker_is_not_ready_and_named():
    snaps = [snapshot("preprocess", State.CLOSED), snapshot("classifier", State.OPEN, since=90.0, consecutive_failures=5)]
    result = check_breakers(snaps, half_open_not_ready=False, now=102.5)
    assert not result.ok
    assert result.reason == "breaker 'classifier' OPEN"
    assert result.value["classifier"]["state"] == "OPEN"
    assert result.value["classifier"]["seconds_in_state"] == 12.5
    assert result.value["classifier"]["consecutive_failures"] == 5
    assert result.value["preprocess"]["state"] == "CLOSED"


def test_half_open_is_ready_unless_configured_otherwise():
    snaps = [snapshot("classifier", State.HALF_OPEN)]
    lenient = check_breakers(snaps, half_open_not_ready=False, now=1.0)
    assert lenient.ok and lenient.reason == "1 breaker(s) closed or probing"
    strict = check_breakers(snaps, half_open_not_ready=True, now=1.0)
    assert not strict.ok and strict.reason == "breaker 'classifier' HALF_OPEN"
    assert strict.limit == "none OPEN or HALF_OPEN"


def test_no_breakers_is_ready():
    result = check_breakers([], half_open_not_ready=True, now=0.0)
    assert result.ok and result.reason == "no breaker in use yet" and result.value == {}


def test_seconds_in_state_never_negative():
    result = check_breakers([snapshot("c", State.CLOSED, since=50.0)], False, now=40.0)
    assert result.value["c"]["seconds_in_state"] == 0.0


# --- pins ---------------------------------------------------------------------------


def test_expected_runtime_cpu_is_the_ci_torch_and_the_server():
    expected = expected_runtime(PINS, "cpu")
    assert expected == {"torch": f"{PINS.ci_torch.version}+cpu", "tritonserver": PINS.container.triton_server}
    # The demo's CPU goldens were recorded on this server version.
    assert GoldenCase.load(DEMO_GOLDENS).expected["cpu"].environment["tritonserver"] == expected["tritonserver"]


def test_expected_runtime_gpu_is_the_image():
    assert expected_runtime(PINS, "gpu") == {
        "torch": f"{PINS.image_torch.version}+{PINS.image_torch.cuda_build}",
        "cuda": PINS.image_torch.cuda,
        "cudnn": PINS.image_torch.cudnn,
        "tritonserver": PINS.container.triton_server,
    }


def test_pins_match():
    expected = {"torch": "2.13.0+cpu", "tritonserver": "2.51.0"}
    result = check_pins(expected, dict(expected), strict=True)
    assert result.ok and result.reason == "runtime matches the pins"


def test_pins_mismatch_is_reported_only_unless_strict():
    expected = {"torch": "2.13.0+cpu", "tritonserver": "2.51.0"}
    observed = {"torch": "2.12.0+cpu", "tritonserver": "2.51.0"}
    lenient = check_pins(expected, observed, strict=False)
    assert lenient.ok
    assert lenient.reason == "mismatch: torch 2.12.0+cpu (pinned 2.13.0+cpu) [reported only: strict_pins is off]"
    strict = check_pins(expected, observed, strict=True)
    assert not strict.ok
    assert strict.reason == "mismatch: torch 2.12.0+cpu (pinned 2.13.0+cpu)"


def test_pins_missing_observation_is_a_mismatch():
    result = check_pins({"tritonserver": "2.51.0"}, {}, strict=True)
    assert not result.ok and "tritonserver None (pinned 2.51.0)" in result.reason


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


# --- the orchestration (triton_guard.canary.runner) with a fake server ----------------

import threading  # noqa: E402

from tests.fakes import FakeClock  # noqa: E402
from triton_guard import promtext  # noqa: E402
from triton_guard.canary.checks import NO_GOLDENS_NOTE  # noqa: E402
from triton_guard.canary.goldens import case_path  # noqa: E402
from triton_guard.canary.runner import Canary, GoldenStore, repositories_from_environment  # noqa: E402

_METRICS = """\
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="add_sub",version="1"} 0
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="add_sub",version="1"} 3
"""
ALL_CHECKS_BUT_GOLDEN = ["liveness", "headroom", "leak_trend", "stall", "breakers", "runtime_pins", "drift"]


def _add_sub(inputs):
    a, b = inputs["INPUT0"], inputs["INPUT1"]
    return {"OUTPUT0": (a + b).astype(np.float32), "OUTPUT1": (a - b).astype(np.float32)}


def _tokenize(inputs):
    texts = inputs["TEXT"].reshape(-1).tolist()
    return {"UPPER": np.array([t.upper() for t in texts], dtype=object).reshape(-1, 1),
            "LENGTH": np.array([len(t) for t in texts], dtype=np.int32).reshape(-1, 1)}


GOLDEN_INPUTS = {
    "add_sub": {"INPUT0": np.array([1, 2, 3, 4], np.float32), "INPUT1": np.array([0.5, 0.25, 0, -1], np.float32)},
    "tokenize": {"TEXT": np.array([[b"hello"], ["h\u00e9".encode()]], dtype=object)},
}
MODELS = {"add_sub": _add_sub, "tokenize": _tokenize}


class FakeFacts:
    """ServerFacts of a healthy CPU server whose models answer with `answers[model](inputs)`."""

    metrics_url = "http://localhost:9102/metrics"

    def __init__(self, answers=None, states=None):
        self.answers = dict(answers if answers is not None else MODELS)
        self.states = states if states is not None else {m: ("READY", "") for m in self.answers}
        self.infer_calls: list[tuple[str, dict, list]] = []
        self.published = []
        self.warnings = []
        self.ready_asked = []

    def fetch_metrics(self, timeout_s):
        return promtext.parse(_METRICS)

    def model_states(self, timeout_s):
        return self.states

    def is_model_ready(self, model):
        self.ready_asked.append(model)
        return self.states.get(model, ("", ""))[0] == "READY"

    def infer(self, model, inputs, outputs):
        self.infer_calls.append((model, dict(inputs), list(outputs)))
        return self.answers[model](inputs)

    def breakers(self):
        return []

    def drift_state(self):
        return None

    def system_memory(self):
        return MemoryReading("host", 1000 * MIB, 500 * MIB)

    def server_version(self):
        return PINS.container.triton_server

    def server_ready(self):
        return True

    def warn(self, message):
        self.warnings.append(message)

    def publish(self, report, reading, trend_snapshot):
        self.published.append(report)


def _record(repository: Path, model: str, answer_of=None, case: str = "basic", device: str = "cpu") -> Path:
    inputs = GOLDEN_INPUTS[model]
    answer = (answer_of or MODELS[model])(inputs)
    golden = record_case(model, case, inputs, answer, answer, device, {}, 1e-4, {})
    path = case_path(repository / model, case)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(golden.to_json())
    return path


def _canary(repository: Path, facts: FakeFacts | None = None, **config) -> Canary:
    runtime = expected_runtime(PINS, "cpu")
    return Canary(CanaryConfig(**config), facts or FakeFacts(), GoldenStore([repository]), runtime, clock=FakeClock(100.0))


def test_with_no_goldens_anywhere_every_other_check_runs_and_the_report_says_so(tmp_path):
    report = _canary(tmp_path).run(CanaryConfig())
    assert [c.name for c in report.checks] == ["golden"] + ALL_CHECKS_BUT_GOLDEN
    assert report.ready, report.failed
    assert report.checks[0].reason == NO_GOLDENS_NOTE and "no golden inference configured" in NO_GOLDENS_NOTE
    assert report.notes == [NO_GOLDENS_NOTE]


def test_every_model_with_goldens_gets_its_own_check_and_gets_its_recorded_inputs(tmp_path):
    _record(tmp_path, "add_sub")
    _record(tmp_path, "tokenize")
    facts = FakeFacts()
    report = _canary(tmp_path, facts).run(CanaryConfig())
    assert [c.name for c in report.checks] == ["golden:add_sub", "golden:tokenize"] + ALL_CHECKS_BUT_GOLDEN
    assert report.ready and report.notes == []
    assert report.checks[0].reason == "case 'basic': bit-exact"
    calls = {model: (inputs, outputs) for model, inputs, outputs in facts.infer_calls}
    np.testing.assert_array_equal(calls["add_sub"][0]["INPUT1"], GOLDEN_INPUTS["add_sub"]["INPUT1"])
    assert calls["tokenize"][0]["TEXT"].tolist() == [[b"hello"], ["h\u00e9".encode()]]
    assert sorted(calls["tokenize"][1]) == ["LENGTH", "UPPER"]


def test_a_wrong_answer_fails_that_models_check_naming_the_output(tmp_path):
    _record(tmp_path, "add_sub")
    _record(tmp_path, "tokenize")
    off_by_one = lambda inputs: {**_add_sub(inputs), "OUTPUT0": _add_sub(inputs)["OUTPUT0"] + 1}  # noqa: E731
    report = _canary(tmp_path, FakeFacts({**MODELS, "add_sub": off_by_one})).run(CanaryConfig())
    assert [c.name for c in report.failed] == ["golden:add_sub"]
    reason = report.failed[0].reason
    assert reason.startswith("case 'basic': OUTPUT0 differs by 1 at [0] (2.5, golden 1.5; tolerance 0.0001)"), reason
    assert "OUTPUT1" not in reason


def test_a_nan_answer_fails_and_the_report_stays_standard_json(tmp_path):
    _record(tmp_path, "add_sub")
    nan = lambda inputs: {**_add_sub(inputs), "OUTPUT1": np.full(4, np.nan, np.float32)}  # noqa: E731
    report = _canary(tmp_path, FakeFacts({"add_sub": nan})).run(CanaryConfig())
    assert report.failed[0].name == "golden:add_sub"
    assert "OUTPUT1 is not finite" in report.failed[0].reason
    assert _strict_json(report.to_json())["ready"] is False


def test_new_goldens_take_effect_at_the_next_run_and_removed_ones_stop(tmp_path):
    canary = _canary(tmp_path)
    assert canary.run(CanaryConfig()).checks[0].name == "golden"
    path = _record(tmp_path, "add_sub")
    assert canary.run(CanaryConfig()).checks[0].name == "golden:add_sub"
    path.unlink()
    assert canary.run(CanaryConfig()).checks[0].name == "golden"


def test_a_changed_golden_file_is_read_again(tmp_path):
    canary = _canary(tmp_path)
    _record(tmp_path, "add_sub")
    assert canary.run(CanaryConfig()).ready
    off = lambda inputs: {**_add_sub(inputs), "OUTPUT0": _add_sub(inputs)["OUTPUT0"] + 1}  # noqa: E731
    path = _record(tmp_path, "add_sub", answer_of=off)  # another expectation, same file
    import os
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse-clock file system
    assert [c.name for c in canary.run(CanaryConfig()).failed] == ["golden:add_sub"]


def test_an_unusable_golden_file_fails_its_models_check_naming_the_file(tmp_path):
    _record(tmp_path, "tokenize")
    bad = case_path(tmp_path / "add_sub", "broken")
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    report = _canary(tmp_path).run(CanaryConfig())
    assert [c.name for c in report.failed] == ["golden:add_sub"]
    assert str(bad) in report.failed[0].reason
    assert next(c for c in report.checks if c.name == "golden:tokenize").ok


def test_goldens_without_this_device_class_fail_saying_how_to_record_them(tmp_path):
    _record(tmp_path, "add_sub", device="gpu")
    report = _canary(tmp_path).run(CanaryConfig())
    assert report.failed[0].name == "golden:add_sub"
    assert "no outputs for device class 'cpu'" in report.failed[0].reason
    assert "triton-guard goldens record --model add_sub" in report.failed[0].reason


def test_the_canary_model_and_files_that_are_not_goldens_are_ignored(tmp_path):
    (tmp_path / "canary" / "goldens").mkdir(parents=True)
    (tmp_path / "canary" / "goldens" / "reference.json").write_text("{}")
    (tmp_path / "add_sub" / "goldens").mkdir(parents=True)
    (tmp_path / "add_sub" / "goldens" / "notes.json").write_text("{}")
    assert GoldenStore([tmp_path]).cases() == {}


def test_a_hung_model_fails_only_its_own_check_by_the_deadline_and_is_not_called_again(tmp_path):
    _record(tmp_path, "add_sub")
    _record(tmp_path, "tokenize")
    release = threading.Event()

    def hung(inputs):
        release.wait(30)
        return _add_sub(inputs)

    facts = FakeFacts({**MODELS, "add_sub": hung})
    canary = _canary(tmp_path, facts, deadline_ms=50)
    try:
        first = canary.run(canary.config)
        assert [c.name for c in first.failed] == ["golden:add_sub"]
        assert first.failed[0].reason == "no answer from 'add_sub' within the 50 ms deadline"
        second = canary.run(canary.config)
        assert second.failed[0].reason.startswith("the previous golden inference of 'add_sub' is still unanswered")
        assert next(c for c in second.checks if c.name == "golden:tokenize").ok
        assert [m for m, _, _ in facts.infer_calls].count("add_sub") == 1
        assert [m for m, _, _ in facts.infer_calls].count("tokenize") == 2
    finally:
        release.set()
        assert canary.close()


def test_a_model_error_fails_its_check_with_the_servers_message(tmp_path):
    _record(tmp_path, "add_sub")

    def failing(inputs):
        raise RuntimeError("add_sub: injected error")

    report = _canary(tmp_path, FakeFacts({"add_sub": failing})).run(CanaryConfig())
    assert report.failed[0].reason == "'add_sub' failed: add_sub: injected error"


def test_probes_never_add_memory_samples_only_the_sampler_does(tmp_path):
    canary = _canary(tmp_path)
    for _ in range(5):
        canary.run(canary.config)
    assert len(canary.trend) == 0
    for _ in range(3):
        canary.clock.advance(1.0)
        canary.sample()
    assert len(canary.trend) == 3
    canary.run(canary.config)
    assert len(canary.trend) == 3


def test_liveness_covers_every_loaded_model_and_says_why_one_is_not_ready(tmp_path):
    states = {"add_sub": ("READY", ""), "broken": ("UNAVAILABLE", "failed to load: no module named torch")}
    report = _canary(tmp_path, FakeFacts(states=states)).run(CanaryConfig())
    assert [c.name for c in report.failed] == ["liveness"]
    assert report.failed[0].reason == "not ready: broken (UNAVAILABLE: failed to load: no module named torch)"


def test_liveness_of_configured_models_asks_each_one(tmp_path):
    facts = FakeFacts(states={"add_sub": ("READY", "")})
    report = _canary(tmp_path, facts, models=("add_sub", "gone")).run(CanaryConfig(models=("add_sub", "gone")))
    assert facts.ready_asked == ["add_sub", "gone"]
    assert report.failed[0].reason == "not ready: gone"


def test_only_the_servers_own_config_publishes_metrics(tmp_path):
    facts = FakeFacts()
    canary = _canary(tmp_path, facts)
    canary.run(canary.config)
    canary.run(canary.config.with_call_options({"strict_pins": True}))
    assert len(facts.published) == 1


def test_the_report_carries_the_metrics_url_the_canary_uses(tmp_path):
    assert _canary(tmp_path).run(CanaryConfig()).metrics_url == FakeFacts.metrics_url


def test_a_probe_arriving_during_a_run_joins_it(tmp_path):
    _record(tmp_path, "add_sub")
    entered, release = threading.Event(), threading.Event()

    def slow(inputs):
        entered.set()
        release.wait(30)
        return _add_sub(inputs)

    facts = FakeFacts({"add_sub": slow})
    canary = _canary(tmp_path, facts, deadline_ms=10_000)
    reports = []
    first = threading.Thread(target=lambda: reports.append(canary.run_shared(canary.config)))
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=lambda: reports.append(canary.run_shared(canary.config)))
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert len(reports) == 2 and reports[0] is reports[1]
    assert len(facts.infer_calls) == 1
    assert canary.close()


def test_close_stops_and_joins_the_sampler(tmp_path):
    canary = _canary(tmp_path, sample_interval_ms=1)
    canary.start()
    sampler = canary._sampler
    assert sampler.is_alive()
    assert canary.close(timeout_s=10)
    assert not sampler.is_alive()


def test_goldens_are_looked_for_in_the_listed_repositories_then_the_canarys_own(tmp_path):
    mine, own = tmp_path / "mine", tmp_path / "package"
    (own / "canary").mkdir(parents=True)
    env = {defaults.MODEL_REPOSITORIES_ENV: str(mine)}
    assert repositories_from_environment(env, own / "canary") == [mine.resolve(), own.resolve()]
    assert repositories_from_environment({}, own / "canary") == [own.resolve()]
    assert repositories_from_environment({defaults.MODEL_REPOSITORIES_ENV: str(own)}, own / "canary") == [own.resolve()]


# --- the default canary that `serve` adds ----------------------------------------------

import tomllib  # noqa: E402

from triton_guard.model_config import read_config  # noqa: E402
from triton_guard.server import CANARY_REPOSITORY, PACKAGE_DIR, LocalServer  # noqa: E402


def _repositories(cmd):
    return [a.split("=", 1)[1] for a in cmd if a.startswith("--model-repository=")]


def test_serve_adds_the_default_canary_only_to_a_repository_without_one(tmp_path):
    assert _repositories(LocalServer(model_repository=tmp_path).command(tmp_path)) == [
        str(tmp_path.resolve()), str(CANARY_REPOSITORY)]
    (tmp_path / "canary").mkdir()
    (tmp_path / "canary" / "config.pbtxt").write_text('name: "canary"\n')
    assert _repositories(LocalServer(model_repository=tmp_path).command(tmp_path)) == [str(tmp_path.resolve())]


def test_the_default_canary_is_a_canary_model_with_default_thresholds():
    config = read_config(CANARY_REPOSITORY / "canary" / "config.pbtxt")
    assert (config.name, config.backend) == ("canary", "canary")
    assert {o.name for o in config.output} == {"READY", "REPORT"}
    assert dict(config.parameters) == {}  # the defaults of triton_guard.defaults
    assert (CANARY_REPOSITORY / "canary" / "1").is_dir()


def test_the_default_canary_is_package_data():
    patterns = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    patterns = patterns["tool"]["setuptools"]["package-data"]["triton_guard"]
    shipped = {p.relative_to(PACKAGE_DIR) for pattern in patterns for p in PACKAGE_DIR.glob(pattern)}
    for path in CANARY_REPOSITORY.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            assert path.relative_to(PACKAGE_DIR) in shipped, path
