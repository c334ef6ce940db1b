"""The canary's configuration: `CanaryConfig`, parsed once and validated on construction.

The `canary` model's config.pbtxt `parameters` (strings) become one frozen
`CanaryConfig` when the model loads (`from_parameters`); a probe may change
a few thresholds for one call (`with_call_options`, the PER_CALL fields).
That one object is what a run is given. Defaults: triton_guard/defaults.py.
Plain Python (no Triton import).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from triton_guard import defaults
from triton_guard.errors import CanaryConfigError


def _bool(name: str, text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise CanaryConfigError(f"{name}={text!r} is invalid: expected true or false")


@dataclass(frozen=True)
class CanaryConfig:
    # Models whose readiness is checked; empty: every model the server has loaded.
    models: tuple[str, ...] = defaults.CANARY_MODELS
    deadline_ms: int = defaults.CANARY_DEADLINE_MS
    interval_ms: int = defaults.CANARY_INTERVAL_MS
    sample_interval_ms: int = defaults.CANARY_SAMPLE_INTERVAL_MS
    headroom_floor_fraction: float = defaults.HEADROOM_FLOOR_FRACTION
    headroom_floor_mb: float = defaults.HEADROOM_FLOOR_MB
    trend_window_s: float = defaults.TREND_WINDOW_S
    trend_min_samples: int = defaults.TREND_MIN_SAMPLES
    # Growth must be steady this long to count as a leak, in total or per instance (docs/memory.md).
    trend_min_span_s: float = defaults.TREND_MIN_SPAN_S
    trend_horizon_s: float = defaults.TREND_HORIZON_S
    # Reload the model whose instance the leak trend blames (floor within trend_horizon_s), at most
    # once per leak_reload_cooldown_s per model; not ready until its new instances run.
    leak_reload: bool = defaults.LEAK_RELOAD
    leak_reload_cooldown_s: float = defaults.LEAK_RELOAD_COOLDOWN_S
    stall_s: float = defaults.STALL_S
    half_open_not_ready: bool = defaults.HALF_OPEN_NOT_READY
    strict_pins: bool = defaults.STRICT_PINS
    drift_fails_readiness: bool = defaults.DRIFT_FAILS_READINESS
    device_class: str = "auto"  # "cpu", "gpu", or "auto": gpu when Triton reports GPU memory
    # Overload is not a fault (canary/overload.py, docs/overload.md).
    overload_evidence_s: float = defaults.OVERLOAD_EVIDENCE_S
    overload_grace_s: float = defaults.OVERLOAD_GRACE_S
    overload_window_s: float = defaults.OVERLOAD_WINDOW_S

    # What a probe may change for one call (thresholds, never what is checked).
    PER_CALL: frozenset = frozenset(
        {
            "deadline_ms",
            "headroom_floor_fraction",
            "headroom_floor_mb",
            "trend_horizon_s",
            "stall_s",
            "half_open_not_ready",
            "strict_pins",
            "drift_fails_readiness",
        }
    )

    def __post_init__(self) -> None:
        positive = ("deadline_ms", "interval_ms", "sample_interval_ms", "trend_window_s", "trend_horizon_s", "stall_s",
                    "overload_evidence_s", "overload_grace_s", "overload_window_s", "leak_reload_cooldown_s")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise CanaryConfigError(f"{name}={value!r} is invalid: expected a number > 0")
        if not 0 <= self.headroom_floor_fraction < 1:
            raise CanaryConfigError(
                f"headroom_floor_fraction={self.headroom_floor_fraction!r} is invalid: expected 0 <= x < 1"
            )
        if not (math.isfinite(self.headroom_floor_mb) and self.headroom_floor_mb >= 0):
            # nan or inf would pass `< 0` and make floor_bytes() raise on every run.
            raise CanaryConfigError(f"headroom_floor_mb={self.headroom_floor_mb!r} is invalid: expected a finite number >= 0")
        if not (math.isfinite(self.trend_min_span_s) and 0 < self.trend_min_span_s < self.trend_window_s):
            # Samples never span more than the window: a longer (or inf) span would mean no verdict, ever;
            # 0 leaves no time to tell steady growth from a warm-up.
            raise CanaryConfigError(
                f"trend_min_span_s={self.trend_min_span_s!r} is invalid: expected 0 < x < trend_window_s "
                f"({self.trend_window_s:g})"
            )
        if self.trend_min_samples < 3:
            raise CanaryConfigError(f"trend_min_samples={self.trend_min_samples!r} is invalid: expected >= 3")
        if self.device_class not in ("auto", "cpu", "gpu"):
            raise CanaryConfigError(f"device_class={self.device_class!r} is invalid: expected auto, cpu or gpu")

    @classmethod
    def from_parameters(cls, params: Mapping[str, Any], base: "CanaryConfig | None" = None) -> "CanaryConfig":
        """Strings from config.pbtxt `parameters` (or a probe's options) -> config; unknown keys raise."""
        base = base or cls()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        changes: dict[str, Any] = {}
        for name, raw in params.items():
            if name not in fields:
                raise CanaryConfigError(f"unknown canary parameter {name!r}; known: {sorted(fields)}")
            current = getattr(base, name)
            try:
                if isinstance(current, bool):
                    changes[name] = raw if isinstance(raw, bool) else _bool(name, raw)
                elif isinstance(current, tuple):
                    changes[name] = tuple(m.strip() for m in str(raw).split(",") if m.strip())
                elif isinstance(current, int):
                    changes[name] = int(raw)
                elif isinstance(current, float):
                    changes[name] = float(raw)
                else:
                    changes[name] = str(raw)
            except (TypeError, ValueError) as exc:
                if isinstance(exc, CanaryConfigError):
                    raise
                raise CanaryConfigError(f"{name}={raw!r} is invalid: expected a {type(current).__name__}") from None
        return dataclasses.replace(base, **changes)

    def with_call_options(self, options: Mapping[str, Any]) -> "CanaryConfig":
        refused = sorted(set(options) - self.PER_CALL)
        if refused:
            raise CanaryConfigError(f"option(s) {refused} cannot be set per call; allowed: {sorted(self.PER_CALL)}")
        return self.from_parameters(options, base=self)
