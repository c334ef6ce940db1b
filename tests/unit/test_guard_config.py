"""GuardConfig: defaults, validation messages, parsing of config.pbtxt parameters."""

from __future__ import annotations

import dataclasses

import pytest

from triton_guard import defaults
from triton_guard.guard.config import ConfigError, GuardConfig


def test_defaults_come_from_defaults_module():
    assert GuardConfig().to_dict() == {
        "timeout_ms": defaults.TIMEOUT_MS,
        "failure_threshold": defaults.FAILURE_THRESHOLD,
        "recovery_ms": defaults.RECOVERY_MS,
        "half_open_max_calls": defaults.HALF_OPEN_MAX_CALLS,
        "max_inflight": defaults.MAX_INFLIGHT,
        "window_size": defaults.WINDOW_SIZE,
        "minimum_calls": defaults.MINIMUM_CALLS,
        "failure_rate_threshold": defaults.FAILURE_RATE_THRESHOLD,
        "slow_call_ms": defaults.SLOW_CALL_MS,
        "slow_call_rate_threshold": defaults.SLOW_CALL_RATE_THRESHOLD,
        "probe_interval_ms": defaults.PROBE_INTERVAL_MS,
    }


def test_parameter_names_are_the_fields():
    assert GuardConfig.parameter_names() == set(GuardConfig().to_dict())


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GuardConfig().timeout_ms = 1  # type: ignore[misc]


INT_FIELDS = ["timeout_ms", "failure_threshold", "recovery_ms", "half_open_max_calls",
              "max_inflight", "window_size", "minimum_calls", "slow_call_ms"]  # fmt: skip
RATE_FIELDS = ["failure_rate_threshold", "slow_call_rate_threshold"]


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10", None, 2**31])
def test_integer_fields_reject_non_positive_or_non_integers(field, bad):
    with pytest.raises(ConfigError) as info:
        GuardConfig(**{field: bad})
    message = str(info.value)
    assert message.startswith(f"{field}={bad!r} is invalid")
    assert "integer" in message


@pytest.mark.parametrize("field", RATE_FIELDS)
@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.01, float("nan"), float("inf"), "0.5", True])
def test_rate_fields_must_be_fractions_in_0_1(field, bad):
    with pytest.raises(ConfigError) as info:
        GuardConfig(**{field: bad})
    assert str(info.value).startswith(f"{field}={bad!r} is invalid")
    assert "(0, 1]" in str(info.value)


@pytest.mark.parametrize("field", RATE_FIELDS)
def test_rate_of_one_is_allowed(field):
    assert getattr(GuardConfig(**{field: 1.0}), field) == 1.0


def test_window_size_bounded_by_ring_capacity():
    GuardConfig(window_size=defaults.WINDOW_SIZE_MAX)
    with pytest.raises(ConfigError, match=rf"window_size={defaults.WINDOW_SIZE_MAX + 1} .*"
                       rf"between 1 and {defaults.WINDOW_SIZE_MAX}"):  # fmt: skip
        GuardConfig(window_size=defaults.WINDOW_SIZE_MAX + 1)


def test_minimum_calls_not_above_window_size():
    GuardConfig(window_size=10, minimum_calls=10)
    with pytest.raises(ConfigError, match=r"minimum_calls=11 .*window_size \(10\)"):
        GuardConfig(window_size=10, minimum_calls=11)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- from_parameters ----------------------------------------------------------------


def test_from_parameters_parses_strings():
    config = GuardConfig.from_parameters(
        {"timeout_ms": "2500", "failure_threshold": " 3 ", "failure_rate_threshold": "0.25",
         "slow_call_ms": "1_000"}  # fmt: skip
    )
    assert (config.timeout_ms, config.failure_threshold) == (2500, 3)
    assert (config.failure_rate_threshold, config.slow_call_ms) == (0.25, 1000)
    assert config.recovery_ms == defaults.RECOVERY_MS  # untouched keys keep defaults


def test_from_parameters_accepts_triton_string_value_form():
    config = GuardConfig.from_parameters({"recovery_ms": {"string_value": "500"}})
    assert config.recovery_ms == 500


def test_from_parameters_ignores_unknown_keys():
    config = GuardConfig.from_parameters({"upstream_model": "resnet", "EXECUTION_ENV_PATH": "x"})
    assert config == GuardConfig()


def test_from_parameters_empty_is_defaults():
    assert GuardConfig.from_parameters({}) == GuardConfig()


@pytest.mark.parametrize(
    "key, raw",
    [("timeout_ms", "ten"), ("timeout_ms", "1.5"), ("window_size", ""),
     ("failure_rate_threshold", "half"), ("slow_call_rate_threshold", "")],
)  # fmt: skip
def test_from_parameters_non_numeric_names_the_key(key, raw):
    with pytest.raises(ConfigError) as info:
        GuardConfig.from_parameters({key: raw})
    assert str(info.value).startswith(f"{key}={raw!r} is invalid")


def test_from_parameters_still_validates_values():
    with pytest.raises(ConfigError, match=r"^half_open_max_calls=0 is invalid"):
        GuardConfig.from_parameters({"half_open_max_calls": "0"})


def test_to_dict_round_trips_through_parameters():
    config = GuardConfig(timeout_ms=123, window_size=50, minimum_calls=5, slow_call_rate_threshold=0.9)
    assert GuardConfig(**config.to_dict()) == config
    as_strings = {key: str(value) for key, value in config.to_dict().items()}
    assert GuardConfig.from_parameters(as_strings) == config


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10", None, 2**31])
def test_probe_interval_must_be_a_non_negative_integer(bad):
    with pytest.raises(ConfigError) as info:
        GuardConfig(probe_interval_ms=bad)
    assert str(info.value).startswith(f"probe_interval_ms={bad!r} is invalid: expected an integer between 0 and")


def test_probe_interval_zero_turns_active_recovery_off_and_parses():
    assert GuardConfig(probe_interval_ms=0).probe_interval_ms == 0
    assert GuardConfig.from_parameters({"probe_interval_ms": " 250 "}).probe_interval_ms == 250
    with pytest.raises(ConfigError, match=r"probe_interval_ms='soon' is invalid: expected an integer"):
        GuardConfig.from_parameters({"probe_interval_ms": "soon"})


# --- GuardSettings: every guard parameter parsed once, kept by every consumer ---------------------------


def test_guard_settings_hold_every_parsed_part():
    from triton_guard.guard.config import DriftConfig, GuardSettings
    from triton_guard.guard.failures import Failure

    settings = GuardSettings.from_parameters("clf", {
        "timeout_ms": {"string_value": "250"}, "client_error_pattern": "^my model says no",
        "check_finite": "False", "heal_dead_upstream": " true ", "drift_output": "PROBS", "drift_window": "50",
    })  # fmt: skip
    assert settings.config == GuardConfig(timeout_ms=250) and settings.config.timeout_s == 0.25
    assert settings.classifier.classify("my model says no: X < 0") is Failure.CLIENT_ERROR
    assert settings.classifier.classify("CUDA error") is Failure.UPSTREAM_ERROR
    assert (settings.check_finite, settings.heal_dead_upstream) == (False, True)
    assert settings.drift == DriftConfig("PROBS", "clf/drift/PROBS.json", window=50)
    defaults_only = GuardSettings.from_parameters("clf", {})
    assert defaults_only.drift is None and defaults_only.check_finite is defaults.CHECK_FINITE


@pytest.mark.parametrize(
    "params, named",
    [
        ({"timeout_msec": "5"}, "unknown guard parameter"),
        ({"client_error_pattern": "("}, "client_error_pattern"),
        ({"check_finite": "maybe"}, "check_finite"),
        ({"drift_window": "50"}, "drift_window is given without drift_output"),
        ({"breaker_name": "a/b"}, "breaker_name='a/b' is invalid"),
        ({"breaker_name": " "}, "breaker_name"),
        ({"breaker_name": ".."}, "breaker_name"),
    ],
)
def test_guard_settings_name_the_bad_parameter(params, named):
    from triton_guard.guard.config import GuardSettings

    with pytest.raises(ConfigError, match=named):
        GuardSettings.from_parameters("clf", params)


def test_breaker_name_names_the_breaker_and_the_drift_files_but_the_upstream_stays():
    from triton_guard.guard.config import GuardSettings

    renamed = GuardSettings.from_parameters("clf_unguarded", {"breaker_name": " clf ", "drift_output": "PROBS"})
    assert renamed.name_for("clf_unguarded") == "clf"
    assert renamed.drift.reference == "clf/drift/PROBS.json"  # beside the name clients call
    assert GuardSettings.from_parameters("x", {"breaker_name": "_my.model-2"}).breaker_name == "_my.model-2"
    plain = GuardSettings.from_parameters("clf", {})
    assert plain.breaker_name is None and plain.name_for("clf") == "clf"


def test_times_are_read_in_seconds():
    config = GuardConfig(timeout_ms=1500, recovery_ms=2000, slow_call_ms=250, probe_interval_ms=0)
    assert (config.timeout_s, config.recovery_s, config.slow_call_s, config.probe_interval_s) == (1.5, 2.0, 0.25, 0.0)
