"""triton_guard.canary.config: the canary's parameters, their parsing and validation, per-call options."""

from __future__ import annotations

import pytest

from triton_guard import defaults
from triton_guard.canary.config import CanaryConfig, CanaryConfigError


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
    assert config.leak_reload is defaults.LEAK_RELOAD is False  # off unless asked: a reload restarts every instance
    assert config.leak_reload_cooldown_s == defaults.LEAK_RELOAD_COOLDOWN_S
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
            "leak_reload": "on",
            "leak_reload_cooldown_s": "600",
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
        leak_reload=True,
        leak_reload_cooldown_s=600.0,
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
        ("trend_min_span_s", "600"),  # = the default window: the samples could never span it
        ("trend_min_span_s", "0"),  # no time to tell steady growth from a warm-up
        ("leak_reload", "maybe"),
        ("leak_reload_cooldown_s", "0"),
        ("leak_reload_cooldown_s", "inf"),
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
