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
from triton_guard.canary.goldens import Golden, compare, output_hash
from triton_guard.canary.memory import MemoryReading, Trend
from triton_guard.pins import load_pins

MIB = 1024 * 1024
PINS = load_pins()
CPU_GOLDENS = Path(__file__).resolve().parents[2] / "model_repository" / "canary" / "goldens" / "cpu.json"


# --- configuration ------------------------------------------------------------------


def test_defaults_come_from_defaults_module():
    config = CanaryConfig()
    assert config.pipeline_model == defaults.CANARY_PIPELINE
    assert config.models == defaults.CANARY_MODELS
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
            "pipeline_model": "pipeline_inline",
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
        pipeline_model="pipeline_inline",
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
        ("models", ""),
        ("models", " , ,"),
        ("pipeline_model", ""),
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
    base = CanaryConfig(pipeline_model="pipeline_inline", models=("pipeline_inline",), stall_s=4.0)
    config = base.with_call_options({"strict_pins": True, "deadline_ms": "500", "headroom_floor_mb": 64})
    assert config == CanaryConfig(
        pipeline_model="pipeline_inline", models=("pipeline_inline",), stall_s=4.0,
        strict_pins=True, deadline_ms=500, headroom_floor_mb=64.0,
    )
    assert base.with_call_options({}) == base


@pytest.mark.parametrize("option", ["models", "pipeline_model", "interval_ms", "trend_window_s", "device_class", "bogus"])
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
        {"models", "pipeline_model", "device_class", "interval_ms", "sample_interval_ms", "trend_window_s", "trend_min_samples"}
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


def _golden() -> Golden:
    labels = np.array([[1]], dtype=np.int64)
    probs = np.zeros((1, 10), dtype=np.float32)
    probs[0, 1] = 1.0
    return Golden("cpu", np.zeros((1, 8, 8), np.uint8), labels, probs, output_hash(labels, probs), 1e-4, {})


def test_golden_without_an_answer_fails_with_the_error():
    result = check_golden(None, "no answer from 'pipeline' within the 2000 ms deadline")
    assert not result.ok and result.value is None
    assert result.reason == "no answer from 'pipeline' within the 2000 ms deadline"
    assert check_golden(None).reason == "no answer"


def test_golden_bit_exact_passes():
    golden = _golden()
    result = check_golden(compare(golden, golden.labels, golden.probs))
    assert result.ok and result.reason == "bit-exact"
    assert result.value == {"bit_exact": True, "labels_match": True, "max_abs_diff": 0.0}
    assert result.limit == {"max_abs_diff": 1e-4}


def test_golden_wrong_label_fails():
    golden = _golden()
    result = check_golden(compare(golden, np.array([[7]]), golden.probs))
    assert not result.ok and "labels" in result.reason
    assert result.value["labels_match"] is False


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
        permits=0, rejections=0, records=0, stale_records=0,
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
    # The committed CPU goldens were recorded on exactly this runtime.
    environment = Golden.load(CPU_GOLDENS).environment
    assert expected == {"torch": environment["torch"], "tritonserver": environment["tritonserver"]}


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
        CheckResult("leak_trend", True, {"slope_bytes_per_s": 0.0, "seconds_to_floor": math.inf, "samples": 12},
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


def test_report_round_trips_through_json_with_inf():
    report = CanaryReport(_checks() + [not_run("golden", "x")], 0.125, "gpu", at=1_700_000_000.5)
    data = json.loads(report.to_json())
    assert data["ready"] is False and data["device_class"] == "gpu"
    back = CanaryReport.from_dict(data)
    assert back == report
    assert back.checks[1].value["seconds_to_floor"] == math.inf
    assert not back.ready and [c.name for c in back.failed] == ["golden"]
