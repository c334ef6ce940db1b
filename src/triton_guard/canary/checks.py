"""The canary's checks and its report, as plain Python (no Triton import).

The canary (triton_guard.canary.runner) gathers facts (model readiness, one
golden inference per model that has goldens, memory readings, server metrics,
breaker states, runtime versions) and these functions turn each into a
`CheckResult`: name, pass/fail, the measured value, the limit and a reason a
person can act on. `ready` is the AND of all checks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from triton_guard import defaults
from triton_guard.guard.breaker import BreakerSnapshot, State
from triton_guard.canary.goldens import CaseComparison
from triton_guard.canary.memory import MemoryReading, Trend
from triton_guard.drift.state import judge
from triton_guard.pins import Pins


class CanaryConfigError(ValueError):
    pass


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
    trend_min_span_s: float = defaults.TREND_MIN_SPAN_S
    trend_horizon_s: float = defaults.TREND_HORIZON_S
    stall_s: float = defaults.STALL_S
    half_open_not_ready: bool = defaults.HALF_OPEN_NOT_READY
    strict_pins: bool = defaults.STRICT_PINS
    drift_fails_readiness: bool = defaults.DRIFT_FAILS_READINESS
    device_class: str = "auto"  # "cpu", "gpu", or "auto": gpu when Triton reports GPU memory

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
        positive = ("deadline_ms", "interval_ms", "sample_interval_ms", "trend_window_s", "trend_horizon_s", "stall_s")
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
        if not (math.isfinite(self.trend_min_span_s) and 0 <= self.trend_min_span_s < self.trend_window_s):
            # Samples never span more than the window: a longer (or inf) span would mean no verdict, ever.
            raise CanaryConfigError(
                f"trend_min_span_s={self.trend_min_span_s!r} is invalid: expected 0 <= x < trend_window_s "
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


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    value: Any
    limit: Any
    reason: str


@dataclass
class CanaryReport:
    checks: list[CheckResult]
    duration_s: float
    device_class: str
    at: float = field(default_factory=time.time)  # wall clock, for people
    notes: list[str] = field(default_factory=list)  # what a passing report should still say
    metrics_url: str | None = None  # the server's /metrics as the canary reaches it

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict:
        return {
            "ready": self.ready,
            "at": self.at,
            "duration_s": self.duration_s,
            "device_class": self.device_class,
            "notes": list(self.notes),
            "metrics_url": self.metrics_url,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }

    def to_json(self) -> str:
        """Standard JSON (jq, Go, JavaScript): a NaN or inf measurement is written as null."""
        return json.dumps(_finite(self.to_dict()), default=str, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> "CanaryReport":
        return cls(
            checks=[CheckResult(**c) for c in data["checks"]],
            duration_s=data["duration_s"],
            device_class=data["device_class"],
            at=data["at"],
            notes=list(data.get("notes") or []),
            metrics_url=data.get("metrics_url"),
        )


def _finite(value):
    """`value` with every non-finite float (NaN, inf, numpy's too) replaced by None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --- the checks ----------------------------------------------------------------


def check_liveness(ready_by_model: Mapping[str, bool], why: Mapping[str, str] | None = None) -> CheckResult:
    """`why`: what the server says of a model that is not ready (its state and reason)."""
    why = why or {}
    not_ready = sorted(m for m, ready in ready_by_model.items() if not ready)
    named = ", ".join(f"{m} ({why[m]})" if why.get(m) else m for m in not_ready)
    return CheckResult(
        "liveness",
        not not_ready,
        {m: ready for m, ready in ready_by_model.items()},
        "all ready",
        f"not ready: {named}" if not_ready else f"{len(ready_by_model)} models ready",
    )


GOLDEN = "golden"  # a golden check is named golden:<model>
NO_GOLDENS_NOTE = (
    "no golden inference configured: no model has goldens "
    "(record some with `triton-guard goldens record`)"
)


def golden_check_name(model: str) -> str:
    return f"{GOLDEN}:{model}"


def metric_labels(check_name: str) -> dict[str, str]:
    """triton_guard_canary_check_ok's labels: golden:add_sub -> check golden, model add_sub; else no model."""
    check, _, model = check_name.partition(":")
    return {"check": check, "model": model}


def check_golden(model: str, comparisons: list[CaseComparison] | None, error: str | None = None) -> CheckResult:
    """One model's golden cases: every case must give its recorded outputs."""
    name = golden_check_name(model)
    if comparisons is None:
        return CheckResult(name, False, None, "answer within deadline", error or "no answer")
    value = {
        c.case: {
            "bit_exact": c.bit_exact,
            "outputs": {o.name: {"ok": o.ok, "max_abs_diff": o.max_abs_diff} for o in c.outputs},
        }
        for c in comparisons
    }
    limit = {c.case: {o.name: o.tolerance for o in c.outputs} for c in comparisons}
    failed = [c for c in comparisons if not c.ok]
    shown = failed or comparisons
    return CheckResult(name, not failed, value, {"tolerance": limit}, "; ".join(c.reason for c in shown))


def check_no_goldens() -> CheckResult:
    """No model has goldens: nothing to compare, and the report says so."""
    return CheckResult(GOLDEN, True, None, None, NO_GOLDENS_NOTE)


def check_headroom(reading: MemoryReading | None, floor: int, error: str | None = None) -> CheckResult:
    if reading is None:
        return CheckResult("headroom", False, None, floor, error or "memory could not be read")
    mb = 1024 * 1024
    ok = reading.free_bytes >= floor
    return CheckResult(
        "headroom",
        ok,
        {"source": reading.source, "free_bytes": reading.free_bytes, "total_bytes": reading.total_bytes},
        {"floor_bytes": floor},
        f"{reading.source} memory free {reading.free_bytes / mb:.0f} MiB "
        f"({'>=' if ok else '<'} floor {floor / mb:.0f} MiB of {reading.total_bytes / mb:.0f} MiB)",
    )


def check_trend(
    trend: Trend | None, horizon_s: float, samples: int, min_samples: int, min_span_s: float = 0.0,
    span_s: float | None = None,
) -> CheckResult:
    """`span_s`: how long the samples collected so far span (said while there is no verdict yet)."""
    if trend is None:
        spanning = f"{span_s:.0f} s of at least {min_span_s:.0f} s" if span_s is not None else f"spanning {min_span_s:.0f} s"
        return CheckResult(
            "leak_trend", True, {"samples": samples}, {"horizon_s": horizon_s},
            f"collecting samples ({samples} of at least {min_samples}, {spanning})",
        )
    ok = trend.seconds_to_floor >= horizon_s
    mb = 1024 * 1024
    if math.isinf(trend.seconds_to_floor):
        reason = f"free memory not falling ({trend.slope_bytes_per_s / mb:+.2f} MiB/s)"
    else:
        reason = (
            f"free memory falling {-trend.slope_bytes_per_s / mb:.2f} MiB/s: floor in "
            f"{trend.seconds_to_floor:.0f} s ({'>=' if ok else '<'} horizon {horizon_s:.0f} s)"
        )
    return CheckResult(
        "leak_trend",
        ok,
        {
            "slope_bytes_per_s": trend.slope_bytes_per_s,
            # null, not Infinity: the report is standard JSON for jq and non-Python clients.
            "seconds_to_floor": None if math.isinf(trend.seconds_to_floor) else trend.seconds_to_floor,
            "samples": trend.samples,
        },
        {"horizon_s": horizon_s},
        reason,
    )


class StallDetector:
    """A model with requests pending and no inference completed for `stall_s` is stalled.

    Fed from Triton's metrics (nv_inference_pending_request_count and
    nv_inference_exec_count per model) at each sample; time is injected.
    """

    def __init__(self) -> None:
        self._last_exec: dict[str, float] = {}
        self._progress_at: dict[str, float] = {}

    def update(self, now: float, pending: Mapping[str, float], executed: Mapping[str, float]) -> None:
        for model, count in executed.items():
            if pending.get(model, 0) <= 0 or self._last_exec.get(model) != count:
                self._progress_at[model] = now
            self._last_exec[model] = count

    def stalled(self, now: float, stall_s: float, pending: Mapping[str, float]) -> dict[str, float]:
        """{model: seconds without progress} for every stalled model."""
        return {
            model: now - at
            for model, at in self._progress_at.items()
            if pending.get(model, 0) > 0 and now - at >= stall_s
        }


def check_stall(stalled: Mapping[str, float] | None, stall_s: float, error: str | None = None) -> CheckResult:
    if stalled is None:
        return CheckResult("stall", False, None, {"stall_s": stall_s}, error or "server metrics unavailable")
    if stalled:
        worst = ", ".join(f"{m} ({s:.0f} s)" for m, s in sorted(stalled.items()))
        return CheckResult("stall", False, dict(stalled), {"stall_s": stall_s}, f"requests pending, nothing completed: {worst}")
    return CheckResult("stall", True, {}, {"stall_s": stall_s}, "no model stalled")


def check_breakers(snapshots: list[BreakerSnapshot], half_open_not_ready: bool, now: float) -> CheckResult:
    """`now` is the breakers' clock (monotonic, one per host) for the time in each state."""
    bad_states = {State.OPEN} | ({State.HALF_OPEN} if half_open_not_ready else set())
    bad = sorted(s.name for s in snapshots if s.state in bad_states)
    states = {
        s.name: {
            "state": s.state.name,
            "seconds_in_state": max(now - s.since, 0.0),
            "consecutive_failures": s.consecutive_failures,
            "failure_rate": s.failure_rate,
            "slow_call_rate": s.slow_call_rate,
            "calls_in_window": s.calls_in_window,
        }
        for s in snapshots
    }
    if bad:
        reason = "breaker " + ", ".join(f"'{n}' {states[n]['state']}" for n in bad)
    else:
        reason = f"{len(states)} breaker(s) closed or probing" if states else "no breaker in use yet"
    return CheckResult("breakers", not bad, states, "none OPEN" + (" or HALF_OPEN" if half_open_not_ready else ""), reason)


def expected_runtime(pins: Pins, device_class: str) -> dict[str, str | None]:
    """The versions a server of this device class should run (pins.toml)."""
    if device_class == "gpu":
        return dict(pins.expected_runtime())
    return {
        "torch": f"{pins.ci_torch.version}+{pins.ci_torch.build}",
        "tritonserver": pins.container.triton_server,
    }


def check_pins(expected: Mapping[str, str | None], observed: Mapping[str, str | None], strict: bool) -> CheckResult:
    mismatches = {k: {"expected": v, "observed": observed.get(k)} for k, v in expected.items() if observed.get(k) != v}
    if not mismatches:
        return CheckResult("runtime_pins", True, dict(observed), dict(expected), "runtime matches the pins")
    text = ", ".join(f"{k} {m['observed']} (pinned {m['expected']})" for k, m in mismatches.items())
    return CheckResult(
        "runtime_pins",
        not strict,
        dict(observed),
        dict(expected),
        f"mismatch: {text}" + ("" if strict else " [reported only: strict_pins is off]"),
    )


def check_drift(states: Mapping[str, Mapping[str, Any]] | None, now: float, fails_readiness: bool,
                stale_s: float = defaults.DRIFT_STALE_S) -> CheckResult:
    """Every monitored model's latest drift verdict (triton_guard.drift.state); `now` is time.monotonic()."""
    limit = {"p_alarm": defaults.DRIFT_P_ALARM, "psi_alarm": defaults.DRIFT_PSI_ALARM, "stale_s": stale_s}
    if not states:
        return CheckResult("drift", True, None, limit, "no monitored model (no guard sets drift_output)")
    verdicts = [judge(model, state, now, stale_s) for model, state in sorted(states.items())]
    value = {v.model: {"status": v.status, **v.value} for v in verdicts}
    reason = "; ".join(f"{v.model}: {v.reason}" for v in verdicts)
    if any(v.alarm for v in verdicts) and not fails_readiness:
        return CheckResult("drift", True, value, limit, f"{reason} [reported only: drift_fails_readiness is off]")
    return CheckResult("drift", not any(v.alarm for v in verdicts), value, limit, reason)


def not_run(name: str, why: str) -> CheckResult:
    return CheckResult(name, False, None, None, f"not run: {why}")
