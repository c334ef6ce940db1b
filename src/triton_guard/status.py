"""`triton-guard status`: one screen for the person on call.

Two sources, both over the network so it works against any server: the
canary's report (breakers with time in state, every check, drift, memory
headroom and trend, the top model instances by memory growth) and Triton's
/metrics (the guard's counters: failures and rejections by reason, calls in
flight, and each breaker's state, so breakers show even when the canary
cannot answer). The metrics port is the one the
canary reports the server uses, else --metrics-url, else the default.
`gather` collects, `render` formats; `--json` prints what `gather` returned.
"""

from __future__ import annotations

import time
from typing import Any

from triton_guard import promtext
from triton_guard import metrics as catalogue
from triton_guard.guard.breaker import State
from triton_guard.guard.record import Override
from triton_guard.canary.leak import duration, per_minute
from triton_guard.canary.overload import OVERLOAD
from triton_guard.canary.probe import Health, ModelHealthValidator

MIB = 1024 * 1024


BREAKER_STATES = {s.value: s.name for s in State}  # triton_guard_breaker_state's values
OVERRIDES = {o.value: o.name for o in Override}  # triton_guard_breaker_override's values


def guard_counters(samples: list[promtext.Sample]) -> dict[str, dict[str, Any]]:
    """Per guarded model: failures and rejections by reason, calls in flight, transitions."""
    models: dict[str, dict[str, Any]] = {}

    def entry(model: str) -> dict[str, Any]:
        return models.setdefault(
            model, {"failures": {}, "rejections": {}, "inflight": 0.0, "transitions": {}, "state": None,
                    "override": None})

    for s in samples:
        model = s.labels.get("model")
        if model is None:
            continue
        if s.name == catalogue.UPSTREAM_FAILURES.name:
            entry(model)["failures"][s.labels["reason"]] = s.value
        elif s.name == catalogue.REJECTIONS.name:
            entry(model)["rejections"][s.labels["reason"]] = s.value
        elif s.name == catalogue.INFLIGHT_CALLS.name:
            entry(model)["inflight"] += s.value
        elif s.name == catalogue.BREAKER_TRANSITIONS.name:
            entry(model)["transitions"][s.labels["to"]] = s.value
        elif s.name == catalogue.BREAKER_STATE.name:
            entry(model)["state"] = BREAKER_STATES.get(int(s.value), str(s.value))
        elif s.name == catalogue.BREAKER_OVERRIDE.name:
            entry(model)["override"] = OVERRIDES.get(int(s.value), str(s.value))
    return models


def gather(url: str, metrics_url: str | None, timeout_s: float) -> dict[str, Any]:
    health = ModelHealthValidator(url, timeout_s).check()
    status: dict[str, Any] = {
        "url": url,
        "at": time.time(),
        "health": health.health.value,
        "reasons": health.reasons,
        "report": health.report.to_dict() if health.report else None,
        "guards": {},
        "metrics_error": None,
    }
    if health.health is Health.UNREACHABLE:
        return status
    metrics_url = metrics_url or promtext.metrics_url_for(url, health.report.metrics_url if health.report else None)
    status["metrics_url"] = metrics_url
    try:
        status["guards"] = guard_counters(promtext.fetch(metrics_url, timeout_s))
    except Exception as exc:  # the canary's part is still worth showing
        status["metrics_error"] = f"{metrics_url}: {exc}"
    return status


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _counts(counts: dict[str, float], names: tuple[str, ...]) -> str:
    return " ".join(f"{n}={int(counts.get(n, 0))}" for n in names if counts.get(n, 0)) or "none"


def render(status: dict[str, Any]) -> str:
    checks_found = (status.get("report") or {}).get("checks") or []
    # Overload never fails readiness (canary/overload.py): said beside the verdict, not instead of it.
    busy = any(c["name"] == OVERLOAD and (c.get("value") or {}).get("overloaded") for c in checks_found)
    lines = [
        f"triton-guard status  {status['url']}  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status['at']))}  "
        f"{status['health'].upper().replace('_', ' ')}" + ("  (OVERLOADED)" if busy else "")
    ]
    if status["health"] == Health.UNREACHABLE.value:
        lines += [f"  {r}" for r in status["reasons"]]
        return "\n".join(lines)
    report = status["report"]
    checks = {c["name"]: c for c in report["checks"]} if report else {}
    breakers = (checks.get("breakers") or {}).get("value") or {}

    lines.append("")
    lines.append("Guarded models")
    models = sorted(set(breakers) | set(status["guards"]))
    if not models:
        lines.append("  (no guard has made a call yet)")
    for model in models:
        b = breakers.get(model, {})
        g = status["guards"].get(model, {"failures": {}, "rejections": {}, "inflight": 0})
        state = b.get("state") or g.get("state") or "?"
        since = _duration(b["seconds_in_state"]) if "seconds_in_state" in b else "?"
        lines.append(
            f"  {model:<18} {state:<9} for {since:<8} in flight {int(g['inflight']):<3} "
            f"failures in a row {b.get('consecutive_failures', '?')}  "
            f"window: {b.get('failure_rate', 0):.0%} failed, {b.get('slow_call_rate', 0):.0%} slow"
        )
        lines.append(
            f"  {'':<18} failures: {_counts(g['failures'], catalogue.UPSTREAM_FAILURES.allowed('reason'))}"
            f"   rejected: {_counts(g['rejections'], catalogue.REJECTIONS.allowed('reason'))}"
        )
        override = b.get("override") or g.get("override")
        if override and override != Override.AUTO.name:
            lines.append(f"  {'':<18} {override} by an operator, until `triton-guard breaker {model} auto`")
    if status.get("metrics_error"):
        lines.append(f"  (guard counters unavailable: {status['metrics_error']})")

    lines.append("")
    if report is None:
        lines.append("Canary: no report")
        lines += [f"  {r}" for r in status["reasons"]]
        return "\n".join(lines)
    lines.append(f"Canary checks ({report['duration_s'] * 1000:.0f} ms, {report['device_class']})")
    width = max([13] + [len(c["name"]) for c in report["checks"]])
    for c in report["checks"]:
        lines.append(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']:<{width}} {c['reason']}")
    for note in report.get("notes") or []:
        lines.append(f"  note: {note}")

    drift = (checks.get("drift") or {}).get("value")
    if drift:
        lines.append("")
        for model, d in drift.items():  # one line per monitored model
            stats = "  ".join(f"{k}={v:.3g}" for k, v in (d.get("statistics") or {}).items())
            lines.append(
                f"Drift    {model:<18} {d.get('output')} ({d.get('kind')})  {stats}  "
                f"window {d.get('n')}/{d.get('window_size')}  {d.get('status', '?').upper()}"
            )
    headroom = (checks.get("headroom") or {}).get("value")
    trend = (checks.get("leak_trend") or {}).get("value") or {}
    if headroom:
        floor = (checks["headroom"].get("limit") or {}).get("floor_bytes", 0)
        slope = trend.get("slope_bytes_per_s")
        trend_text = "collecting samples" if slope is None else f"{slope / MIB:+.2f} MiB/s"
        lines.append(
            f"Memory   {headroom['source']}: {headroom['free_bytes'] / MIB:.0f} MiB free of "
            f"{headroom['total_bytes'] / MIB:.0f} MiB (floor {floor / MIB:.0f} MiB), trend {trend_text}"
        )
    lines += instance_lines(trend)
    return "\n".join(lines)


TOP_INSTANCES = 5


def instance_lines(trend: dict[str, Any], top: int = TOP_INSTANCES) -> list[str]:
    """The leak trend's instances, fastest growing first (the canary sorts them), the blamed ones marked."""
    rows = trend.get("instances") or []
    if not rows:
        return []
    blamed, at_risk = set(trend.get("blamed") or ()), set(trend.get("at_risk") or ())
    shown = sorted(rows, key=lambda r: (r["instance"] not in blamed | at_risk, -(r.get("rate_bytes_per_s") or 0.0)))
    lines = [f"Instances (memory, fastest growing first; {len(rows)} in all)"]
    for row in shown[:top]:
        rate = row.get("rate_bytes_per_s")
        if rate is None:
            growth = "collecting samples"
        elif row.get("steady"):
            growth = f"{per_minute(rate)} for {duration(row['growing_for_s'])}"
        else:
            growth = f"{per_minute(rate)}, not steady"
        to_floor = row.get("seconds_to_floor")
        verdict = ("LEAKING" if row["instance"] in blamed else "STARVING" if row["instance"] in at_risk
                   else f"floor in {duration(to_floor)}" if to_floor is not None else "")
        lines.append(
            f"  {row['instance']:<24} {row['model']:<18} pid {row['pid']:<7} {row['kind']} {row['bytes'] / MIB:>7.0f} MiB"
            f"  {growth:<28} {verdict}".rstrip()
        )
    for model, why in (trend.get("reloading") or {}).items():
        lines.append(f"  reloading {model}: {why}")
    if trend.get("note"):
        lines.append(f"  note: {trend['note']}")
    return lines
