"""Guard settings, parsed once into frozen, validated objects that every consumer takes as is.

`GuardSettings.from_parameters` reads a guard model's config.pbtxt
`parameters` block once: `GuardConfig` (breaker, bulkhead and deadline; also
what the client-side guard takes), the `FailureClassifier` built from
`client_error_pattern`, the `DriftConfig` of the drift_* parameters and the
two switches. Anything not given keeps its default from defaults.py; a bad
value raises ConfigError naming the parameter. Times are given in ms (the
parameters' unit) and read in seconds (`timeout_s`, ...): the guard counts
in seconds inside.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from triton_guard import defaults
from triton_guard.errors import ConfigError
from triton_guard.guard.failures import FailureClassifier

# Counters in the shared state file are 32-bit; keep every integer setting
# well inside that so no arithmetic on it can overflow the layout.
_INT_MAX = 2**31 - 1


def _reject(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{name}={value!r} is invalid: expected {allowed}")


def _in_seconds(ms_field: str) -> property:
    """A read-only property: the setting `ms_field` (milliseconds, the parameters' unit) in seconds."""
    return property(lambda self: getattr(self, ms_field) / 1000.0, doc=f"{ms_field} in seconds")


@dataclasses.dataclass(frozen=True)
class GuardConfig:
    timeout_ms: int = defaults.TIMEOUT_MS
    failure_threshold: int = defaults.FAILURE_THRESHOLD
    recovery_ms: int = defaults.RECOVERY_MS
    half_open_max_calls: int = defaults.HALF_OPEN_MAX_CALLS
    max_inflight: int = defaults.MAX_INFLIGHT
    window_size: int = defaults.WINDOW_SIZE
    minimum_calls: int = defaults.MINIMUM_CALLS
    failure_rate_threshold: float = defaults.FAILURE_RATE_THRESHOLD
    slow_call_ms: int = defaults.SLOW_CALL_MS
    slow_call_rate_threshold: float = defaults.SLOW_CALL_RATE_THRESHOLD
    probe_interval_ms: int = defaults.PROBE_INTERVAL_MS  # 0: no active recovery

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            _check_positive_int(name, getattr(self, name))
        for name in _NON_NEGATIVE_INT_FIELDS:
            _check_int(name, getattr(self, name), 0)
        for name in _RATE_FIELDS:
            _check_rate(name, getattr(self, name))
        if self.window_size > defaults.WINDOW_SIZE_MAX:
            raise _reject(
                "window_size",
                self.window_size,
                f"an integer between 1 and {defaults.WINDOW_SIZE_MAX} "
                "(the ring capacity of the shared state file)",
            )
        if self.minimum_calls > self.window_size:
            raise _reject(
                "minimum_calls",
                self.minimum_calls,
                f"an integer between 1 and window_size ({self.window_size}); "
                "a larger value could never be reached",
            )

    # Seconds: the unit of every clock and deadline inside the guard.
    timeout_s = _in_seconds("timeout_ms")
    recovery_s = _in_seconds("recovery_ms")
    slow_call_s = _in_seconds("slow_call_ms")
    probe_interval_s = _in_seconds("probe_interval_ms")

    @classmethod
    def parameter_names(cls) -> frozenset[str]:
        """The config.pbtxt parameter keys this class consumes."""
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_parameters(cls, params: Mapping[str, Any]) -> GuardConfig:
        """Build from config.pbtxt `parameters` (string values).

        Values may be plain strings or Triton's `{"string_value": "..."}`
        form. Keys that are not settings of this class are ignored: the caller
        owns them.
        """
        values: dict[str, Any] = {}
        for name in _INT_FIELDS + _NON_NEGATIVE_INT_FIELDS:
            if name in params:
                values[name] = _parse(name, params[name], int, "an integer")
        for name in _RATE_FIELDS:
            if name in params:
                values[name] = _parse(name, params[name], float, "a number")
        return cls(**values)

    def to_dict(self) -> dict[str, int | float]:
        return dataclasses.asdict(self)


_INT_FIELDS = (
    "timeout_ms",
    "failure_threshold",
    "recovery_ms",
    "half_open_max_calls",
    "max_inflight",
    "window_size",
    "minimum_calls",
    "slow_call_ms",
)
_NON_NEGATIVE_INT_FIELDS = ("probe_interval_ms",)  # 0 means "off"
_RATE_FIELDS = ("failure_rate_threshold", "slow_call_rate_threshold")


def _check_positive_int(name: str, value: Any) -> None:
    _check_int(name, value, 1)


def _check_int(name: str, value: Any, low: int) -> None:
    # bool is an int subclass; `True` as a call count is a bug upstream.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= _INT_MAX:
        raise _reject(name, value, f"an integer between {low} and {_INT_MAX}")


def _check_rate(name: str, value: Any) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    # Written so that NaN fails too (every comparison with NaN is False).
    if not is_number or not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise _reject(name, value, "a fraction in (0, 1]")


def _parse(name: str, raw: Any, kind: type, what: str) -> Any:
    if isinstance(raw, Mapping) and "string_value" in raw:
        raw = raw["string_value"]
    if not isinstance(raw, str):
        raise _reject(name, raw, f"{what} given as a string")
    try:
        return kind(raw.strip())
    except ValueError:
        raise _reject(name, raw, what) from None


# Guard parameters beyond GuardConfig's thresholds (GuardSettings' other fields).
EXTRA_PARAMETERS = frozenset({"client_error_pattern", "heal_dead_upstream", "check_finite", "breaker_name"})
# A breaker name travels in a file name, metric labels and messages: any model folder's name will do
# (as an upstream's name does), nothing that could leave the state directory.
_BREAKER_NAME = re.compile(r"(?!\.\.?$)[^/\s\x00]{1,255}")


@dataclasses.dataclass(frozen=True)
class GuardSettings:
    """Every setting of one guard model, parsed and validated once."""

    config: GuardConfig = dataclasses.field(default_factory=GuardConfig)
    classifier: FailureClassifier = dataclasses.field(default_factory=FailureClassifier)
    drift: DriftConfig | None = None
    heal_dead_upstream: bool = defaults.HEAL_DEAD_UPSTREAM
    check_finite: bool = defaults.CHECK_FINITE
    # The name the breaker, its metrics, its messages and its drift files go by; None: the upstream's.
    # The renaming placement sets it to the name clients call (the upstream is MODEL_unguarded there).
    breaker_name: str | None = None

    def name_for(self, upstream: str) -> str:
        """What this guard calls the model it protects, to clients, dashboards and operators."""
        return self.breaker_name or upstream

    @classmethod
    def parameter_names(cls) -> frozenset[str]:
        """Every config.pbtxt parameter key a guard consumes (upstream_model aside)."""
        return GuardConfig.parameter_names() | EXTRA_PARAMETERS | DRIFT_PARAMETERS

    @classmethod
    def from_parameters(cls, upstream: str, params: Mapping[str, Any]) -> GuardSettings:
        """Parse config.pbtxt `parameters` (plain strings or `{"string_value": ...}`).

        `params` must hold guard parameters only (the caller removes its own,
        such as upstream_model). Raises ConfigError naming the first unknown or
        bad parameter.
        """
        unknown = sorted(set(params) - cls.parameter_names())
        if unknown:
            raise ConfigError(f"unknown guard parameter(s) {unknown}; known: {sorted(cls.parameter_names())}")
        pattern = params.get("client_error_pattern")
        if isinstance(pattern, Mapping):
            pattern = pattern.get("string_value")
        try:
            classifier = FailureClassifier(pattern or None)
        except re.error as exc:
            raise _reject("client_error_pattern", pattern, f"a Python regular expression ({exc})") from None
        breaker_name = params.get("breaker_name")
        if isinstance(breaker_name, Mapping):
            breaker_name = breaker_name.get("string_value")
        if breaker_name is not None:
            breaker_name = str(breaker_name).strip()
            if not _BREAKER_NAME.fullmatch(breaker_name):
                raise _reject("breaker_name", breaker_name, "a model's name (no '/', no white space, not '.' or '..')")
        return cls(
            config=GuardConfig.from_parameters(params),
            classifier=classifier,
            drift=DriftConfig.from_parameters(breaker_name or upstream, params),
            breaker_name=breaker_name,
            heal_dead_upstream=_parse_flag(params, "heal_dead_upstream", defaults.HEAL_DEAD_UPSTREAM),
            check_finite=_parse_flag(params, "check_finite", defaults.CHECK_FINITE),
        )


def _parse_flag(params: Mapping[str, Any], name: str, default: bool) -> bool:
    raw = params.get(name, str(default))
    if isinstance(raw, Mapping):
        raw = raw.get("string_value", "")
    value = str(raw).strip().lower()
    if value not in ("true", "false"):
        raise _reject(name, value, "true or false")
    return value == "true"


def validate_parameters(params: Mapping[str, Any]) -> GuardConfig:
    """Every check the guard backend makes at load, for `triton-guard guard` before it writes a config.

    `params` are config.pbtxt `parameters` without `upstream_model` (the
    caller's). Raises ConfigError naming the first unknown or bad parameter;
    returns the breaker's part (the writer keeps nothing else).
    """
    return GuardSettings.from_parameters("upstream", params).config


# --- Output drift monitoring (triton_guard.drift; docs/drift.md) ---

DRIFT_WINDOW_MIN, DRIFT_WINDOW_MAX = 10, 100_000


@dataclasses.dataclass(frozen=True)
class DriftConfig:
    """Which upstream output a guard monitors, and how; from the guard's `drift_*` parameters.

    Monitoring is on when `drift_output` is given. `reference` is relative to
    the model repository's root unless absolute; by default the file
    `triton-guard drift record` writes: <upstream>/drift/<output>.json.
    `kind` None: whatever the reference file says.
    """

    output: str
    reference: str
    kind: str | None = None
    window: int = defaults.DRIFT_WINDOW
    p_alarm: float = defaults.DRIFT_P_ALARM
    psi_alarm: float = defaults.DRIFT_PSI_ALARM

    def __post_init__(self) -> None:
        if not self.output.strip():
            raise _reject("drift_output", self.output, "the name of one of the upstream's outputs")
        if self.kind is not None and self.kind not in ("probs", "values"):
            raise _reject("drift_kind", self.kind, "probs (class probabilities) or values (real-valued rows)")
        if isinstance(self.window, bool) or not DRIFT_WINDOW_MIN <= self.window <= DRIFT_WINDOW_MAX:
            raise _reject("drift_window", self.window, f"an integer between {DRIFT_WINDOW_MIN} and {DRIFT_WINDOW_MAX}")
        if not (math.isfinite(self.p_alarm) and 0.0 < self.p_alarm < 1.0):
            raise _reject("drift_p_alarm", self.p_alarm, "a p-value in (0, 1)")
        if not (math.isfinite(self.psi_alarm) and self.psi_alarm > 0.0):
            raise _reject("drift_psi_alarm", self.psi_alarm, "a PSI > 0")

    @classmethod
    def from_parameters(cls, upstream: str, params: Mapping[str, Any]) -> DriftConfig | None:
        """None when `drift_output` is absent (then no other drift_* parameter may be given)."""
        raw = {name: params[name] for name in DRIFT_PARAMETERS if name in params}
        raw = {k: v["string_value"] if isinstance(v, Mapping) and "string_value" in v else v for k, v in raw.items()}
        for name, value in raw.items():
            if not isinstance(value, str):
                raise _reject(name, value, "a string")
        output = raw.get("drift_output", "").strip()
        if not output:
            if raw:
                raise ConfigError(f"{sorted(raw)[0]} is given without drift_output (the output to monitor)")
            return None
        kind = raw.get("drift_kind", "").strip() or None
        values: dict[str, Any] = {
            "output": output,
            "reference": raw.get("drift_reference", "").strip()
            or f"{upstream}/{defaults.DRIFT_REFERENCE_DIR}/{output}.json",
            "kind": kind,
        }
        if "drift_window" in raw:
            values["window"] = _parse("drift_window", raw["drift_window"], int, "an integer")
        if "drift_p_alarm" in raw:
            values["p_alarm"] = _parse("drift_p_alarm", raw["drift_p_alarm"], float, "a number")
        if "drift_psi_alarm" in raw:
            values["psi_alarm"] = _parse("drift_psi_alarm", raw["drift_psi_alarm"], float, "a number")
        return cls(**values)

    def thresholds(self) -> dict[str, float]:
        return {"p_alarm": self.p_alarm, "psi_alarm": self.psi_alarm}


DRIFT_PARAMETERS = frozenset(
    {"drift_output", "drift_kind", "drift_reference", "drift_window", "drift_p_alarm", "drift_psi_alarm"}
)
