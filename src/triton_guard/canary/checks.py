"""The canary's verdicts, as plain Python (no Triton import).

The canary (canary/runner.py) gathers one run's facts from the server into a
`RunFacts` (model readiness, each golden model's comparisons, memory
readings, stalled models, breaker states, runtime versions, drift states);
`judge` turns them into the report's checks with the run's `CanaryConfig`,
each a `CheckResult` (canary/report.py): name, pass/fail, the measured value,
the limit and a reason a person can act on. The golden verdict itself lives
with its comparison in canary/golden_check.py. `StallDetector` keeps, between
runs, when each model last made progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from triton_guard import defaults
from triton_guard.canary.config import CanaryConfig
from triton_guard.canary.golden_check import CaseComparison, check_golden, check_no_goldens
from triton_guard.canary.leak import LeakAssessment, check_leak_trend
from triton_guard.canary.memory import MemoryReading
from triton_guard.canary.report import CheckResult
from triton_guard.drift.state import judge as judge_drift
from triton_guard.guard.breaker import BreakerSnapshot, State
from triton_guard.guard.record import Override
from triton_guard.pins import Pins, load_pins


@dataclass(frozen=True)
class RunFacts:
    """What one run found on the server (canary/runner.py gathers it, in this order); `judge` judges it."""

    device_class: str
    goldens: dict[str, list[CaseComparison] | str] | None  # by model: its comparisons, or why none; None: no goldens
    ready_by_model: dict[str, bool] | None  # None: the models could not be listed (liveness_error says why)
    not_ready_why: dict[str, str] | None
    liveness_error: str | None
    reading: MemoryReading | None  # None: memory unread (memory_error says why)
    memory_error: str | None
    floor: int  # the headroom floor, bytes (when there is a reading)
    leak: LeakAssessment | None  # the leak trend, in total and per instance (canary/leak.py); None without a reading
    waiting: dict[str, float] | None  # StallDetector.waiting; None: no metrics (metrics_error says why)
    metrics_error: str | None
    breakers: list[BreakerSnapshot]
    breakers_at: float  # the breakers' clock (time.monotonic) when they were read
    runtime: dict[str, str | None]  # observed runtime versions
    drift: Mapping[str, Mapping[str, Any]] | None
    drift_at: float  # time.monotonic when the drift states were read
    orphaned_breakers: frozenset[str] = frozenset()  # left by guards the server no longer runs (runner._orphaned)


def judge(config: CanaryConfig, facts: RunFacts) -> list[CheckResult]:
    """Every check of one run, in the report's order: goldens first, then liveness, memory, the rest."""
    if facts.goldens is None:
        checks = [check_no_goldens()]
    else:
        checks = [
            check_golden(model, None, found) if isinstance(found, str) else check_golden(model, found)
            for model, found in sorted(facts.goldens.items())
        ]
    if facts.ready_by_model is None:
        checks.append(CheckResult("liveness", False, None, "all ready", facts.liveness_error))
    else:
        checks.append(check_liveness(facts.ready_by_model, facts.not_ready_why))
    if facts.reading is not None:
        checks.append(check_headroom(facts.reading, facts.floor))
        checks.append(check_leak_trend(facts.leak, config.trend_min_samples))
    else:
        checks.append(check_headroom(None, 0, facts.memory_error))
        checks.append(not_run("leak_trend", facts.memory_error or "no memory reading"))
    if facts.waiting is None:
        checks.append(check_stall(None, config.stall_s, facts.metrics_error))
    else:
        checks.append(check_stall(over_stall(facts.waiting, config.stall_s), config.stall_s))
    checks.append(check_breakers(facts.breakers, config.half_open_not_ready, facts.breakers_at, facts.orphaned_breakers))
    expected = expected_runtime(load_pins(), facts.device_class)
    observed = {k: facts.runtime.get(k) for k in expected}
    checks.append(check_pins(expected, observed, config.strict_pins))
    checks.append(check_drift(facts.drift, facts.drift_at, config.drift_fails_readiness))
    return checks


def metric_labels(check_name: str) -> dict[str, str]:
    """triton_guard_canary_check_ok's labels: golden:add_sub -> check golden, model add_sub; else no model."""
    check, _, model = check_name.partition(":")
    return {"check": check, "model": model}


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

    def waiting(self, now: float, pending: Mapping[str, float]) -> dict[str, float]:
        """{model: seconds without progress} for every model with requests pending."""
        return {model: now - at for model, at in self._progress_at.items() if pending.get(model, 0) > 0}

    def stalled(self, now: float, stall_s: float, pending: Mapping[str, float]) -> dict[str, float]:
        """{model: seconds without progress} for every stalled model."""
        return over_stall(self.waiting(now, pending), stall_s)


def over_stall(waiting: Mapping[str, float], stall_s: float) -> dict[str, float]:
    """The models of `waiting` ({model: seconds without progress}) that have waited `stall_s` or more."""
    return {model: seconds for model, seconds in waiting.items() if seconds >= stall_s}


def check_stall(stalled: Mapping[str, float] | None, stall_s: float, error: str | None = None) -> CheckResult:
    if stalled is None:
        return CheckResult("stall", False, None, {"stall_s": stall_s}, error or "server metrics unavailable")
    if stalled:
        worst = ", ".join(f"{m} ({s:.0f} s)" for m, s in sorted(stalled.items()))
        return CheckResult("stall", False, dict(stalled), {"stall_s": stall_s}, f"requests pending, nothing completed: {worst}")
    return CheckResult("stall", True, {}, {"stall_s": stall_s}, "no model stalled")


def check_breakers(snapshots: list[BreakerSnapshot], half_open_not_ready: bool, now: float,
                   orphaned: frozenset[str] = frozenset()) -> CheckResult:
    """`now` is the breakers' clock (monotonic, one per host) for the time in each state; `orphaned` breakers
    (their guards no longer run) are shown but never fail readiness."""
    bad_states = {State.OPEN} | ({State.HALF_OPEN} if half_open_not_ready else set())
    bad = sorted(s.name for s in snapshots if s.state in bad_states and s.name not in orphaned)
    states = {
        s.name: {
            "state": s.state.name,
            "seconds_in_state": max(now - s.since, 0.0),
            "consecutive_failures": s.consecutive_failures,
            "failure_rate": s.failure_rate,
            "slow_call_rate": s.slow_call_rate,
            "calls_in_window": s.calls_in_window,
            "override": s.override.name,  # AUTO, or an operator's FORCED_OPEN / FORCED_CLOSED
            **({"guard_loaded": False} if s.name in orphaned else {}),
        }
        for s in snapshots
    }
    left = sorted(n for n in orphaned if n in states)
    if bad:
        forced = {s.name for s in snapshots if s.override is Override.FORCED_OPEN}
        reason = "breaker " + ", ".join(
            f"'{n}' {states[n]['state']}" + (" (opened by an operator)" if n in forced else "") for n in bad
        )
    else:
        in_use = len(states) - len(left)
        reason = f"{in_use} breaker(s) closed or probing" if in_use else "no breaker in use yet"
    if left:
        reason += "; " + ", ".join(f"'{n}' {states[n]['state']}" for n in left) + " left by a guard no longer loaded: ignored"
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
    verdicts = [judge_drift(model, state, now, stale_s) for model, state in sorted(states.items())]
    value = {v.model: {"status": v.status, **v.value} for v in verdicts}
    reason = "; ".join(f"{v.model}: {v.reason}" for v in verdicts)
    if any(v.alarm for v in verdicts) and not fails_readiness:
        return CheckResult("drift", True, value, limit, f"{reason} [reported only: drift_fails_readiness is off]")
    return CheckResult("drift", not any(v.alarm for v in verdicts), value, limit, reason)


def not_run(name: str, why: str) -> CheckResult:
    return CheckResult(name, False, None, None, f"not run: {why}")
