"""How well does the canary tell a leaking model instance from one that merely warms up?

Offline, on synthetic memory traces with injected time: thousands of simulated
hours in a minute or two, nothing written anywhere (the table goes to stdout).

A simulated server has INSTANCES model instances sampled once a second; the
canary judges every 10 s, as it does. Each healthy instance starts (and, in
the soak, restarts every hour) with one of the shapes a real model shows:

  warm-up      grows fast then flattens (1 - exp(-t/tau)), tau 5-120 s
  cache        fills once (50-1000 MB) at a constant rate for 5-180 s, then stays
  cache (log)  grows ~ log(1 + t/tau) for up to 20 min, then stays
  steps        a few upward steps, each smaller than the last (batch sizes growing)
  sawtooth     an allocator's ramp-and-release, period 5-600 s
  flat         noise only

all with Gaussian noise (0.2-5 MB) and occasional spikes. A leaking instance
has one of those shapes plus a constant leak from a start time on. Headroom
(free minus floor) is drawn per server; the horizon is the canary's default.

Methods compared (each blames an instance when it projects the floor within
the horizon):

  linear      least-squares line through the last 300 s of samples once they
              span 60 s: the total's method (and defaults) before issue 16,
              applied per instance
  steady S    the canary's method (triton_guard.canary.growth): steady growth
              over the last S seconds (S = trend_min_span_s; the default is
              steady 60 s), over a trend_window_s of history, that has gone
              on for half the time it leaves to the floor (the evidence rule)
  steady 60 s, no evidence rule   the same without that last condition

Printed: false blames (episodes of a healthy instance being named, per 1,000
instance-hours, and the share of verdicts), per healthy shape; and for leaks
of several rates, how long after the leak started the right instance was
first named (median, 95th percentile), the least time left before the floor
at that moment, how many reached the floor unnamed, and how often another
instance was named instead.

    python scripts/eval_leak_blame.py                 # about 10 minutes on 2 busy cores
    python scripts/eval_leak_blame.py --hours 200     # quicker, coarser
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from bisect import bisect_left
from multiprocessing import Pool

import numpy as np

from triton_guard import defaults
from triton_guard.canary.growth import assess

MB = float(1 << 20)
GB = 1024 * MB
SAMPLE_S = defaults.CANARY_SAMPLE_INTERVAL_MS / 1000
JUDGE_S = defaults.CANARY_INTERVAL_MS / 1000
HORIZON_S = defaults.TREND_HORIZON_S
WINDOW_S = defaults.TREND_WINDOW_S
MIN_RISE = defaults.LEAK_MIN_RISE_MB * MB
INSTANCES = 4
SHAPES = ("warm-up", "cache", "cache (log)", "steps", "sawtooth", "flat")
LEAK_RATES_MB_S = (0.5, 2.0, 10.0, 30.0, 100.0)


# --- traces ------------------------------------------------------------------------


def shape(kind: str, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bytes above the instance's base at times t (seconds since it started)."""
    if kind == "warm-up":
        return rng.uniform(50, 1000) * MB * (1 - np.exp(-t / rng.uniform(5, 120)))
    if kind == "cache":
        size, duration = rng.uniform(50, 1000) * MB, rng.uniform(5, 180)
        return size * np.minimum(t / duration, 1.0)
    if kind == "cache (log)":
        size, tau, until = rng.uniform(50, 800) * MB, rng.uniform(5, 60), rng.uniform(120, 1200)
        return size * np.log1p(np.minimum(t, until) / tau) / math.log1p(until / tau)
    if kind == "steps":
        out = np.zeros_like(t)
        at, size = 0.0, rng.uniform(50, 400) * MB
        for _ in range(int(rng.integers(2, 6))):
            at += rng.uniform(10, 300)
            out += np.where(t >= at, size, 0.0)
            size *= rng.uniform(0.3, 0.8)
        return out
    if kind == "sawtooth":
        amplitude, period = rng.uniform(10, 500) * MB, rng.uniform(5, 600)
        return amplitude * ((t + rng.uniform(0, period)) % period) / period
    if kind == "flat":
        return np.zeros_like(t)
    raise ValueError(kind)


def trace(kind: str, seconds: float, rng: np.random.Generator, restart_s: float | None = None) -> np.ndarray:
    """One instance's memory at every sample: `kind`, restarting every `restart_s`, noise and spikes."""
    t = np.arange(0.0, seconds, SAMPLE_S)
    since = t % restart_s if restart_s else t
    values = np.empty_like(t)
    starts = np.flatnonzero(since == 0) if restart_s else np.array([0])
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else len(t)
        values[start:stop] = shape(kind, since[start:stop], rng)
    values += rng.normal(0.0, rng.uniform(0.2, 5) * MB, len(t))
    spikes = rng.random(len(t)) < 0.002  # a large batch now and then
    values[spikes] += rng.uniform(20, 200, spikes.sum()) * MB
    return 500 * MB + values


# --- the methods --------------------------------------------------------------------


class Linear:
    """Least squares over the trend window: the total's method before issue 16 (its defaults then:
    a 300 s window, no verdict before the samples span 60 s)."""

    name = "linear"

    def __init__(self, window_s: float = 300.0, min_span_s: float = 60.0) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s

    def judge(self, t: list[float], v: list[float], end: int, room: float) -> float:
        start = bisect_left(t, t[end - 1] - self.window_s)
        if end - start < defaults.TREND_MIN_SAMPLES or t[end - 1] - t[start] < self.min_span_s:
            return math.inf
        tt, vv = np.array(t[start:end]), np.array(v[start:end])
        tc = tt - tt.mean()
        slope = float(tc @ (vv - vv.mean())) / float(tc @ tc)
        return room / slope if slope > 0 else math.inf


class Steady:
    """The canary's steady-growth test (triton_guard.canary.growth.assess), with or without its evidence rule."""

    def __init__(self, sustain_s: float, evidence: float = defaults.LEAK_EVIDENCE_RATIO) -> None:
        self.sustain_s = sustain_s
        self.evidence = evidence
        self.name = f"steady {sustain_s:.0f} s" + ("" if evidence else ", no evidence rule")

    def judge(self, t: list[float], v: list[float], end: int, room: float) -> float:
        start = bisect_left(t, t[end - 1] - WINDOW_S)
        if t[end - 1] - t[start] < self.sustain_s:
            return math.inf
        growth = assess(t[start:end], v[start:end], self.sustain_s, MIN_RISE, WINDOW_S)
        return math.inf if growth is None else growth.seconds_to(room, self.evidence)


# --- the experiments ------------------------------------------------------------------


def soak(method, kind: str, hours: float, seed: int) -> list[float]:
    """One healthy shape: [instance-hours, blame episodes, verdicts, blamed verdicts]."""
    rng = np.random.default_rng(seed)
    found = [0.0, 0, 0, 0]
    step = int(JUDGE_S / SAMPLE_S)
    chunk_s = 4 * 3600.0
    done = 0.0
    while done < hours * 3600:
        seconds = min(chunk_s, hours * 3600 - done)
        values = trace(kind, seconds, rng, restart_s=3600.0)  # a fresh instance (reload) every hour
        v = values.tolist()
        t = (np.arange(len(v)) * SAMPLE_S).tolist()
        room0 = rng.uniform(2, 16) * GB
        blamed_before = False
        for end in range(step, len(v) + 1, step):
            blamed = method.judge(t, v, end, room0 - (v[end - 1] - v[0])) < HORIZON_S
            found[2] += 1
            found[3] += blamed
            found[1] += blamed and not blamed_before
            blamed_before = blamed
        found[0] += seconds / 3600
        done += seconds
    return found


def leak_trial(method, rate_mb_s: float, rng: np.random.Generator) -> tuple[float | None, float, bool]:
    """(seconds from the leak's start to the leaker named or None, seconds to the floor then,
    another instance named first).

    Every judgement names the instance whose floor is soonest (as the check does).
    """
    room0 = 8 * GB
    leak_start = float(rng.choice([0.0, rng.uniform(300, 1800)]))  # with the warm-up, or later
    rate = rate_mb_s * MB
    seconds = leak_start + room0 / rate + 60
    kinds = rng.choice(SHAPES, INSTANCES)
    traces = [trace(str(k), seconds, rng) for k in kinds]
    t_array = np.arange(len(traces[0])) * SAMPLE_S
    traces[0] = traces[0] + rate * np.clip(t_array - leak_start, 0, None)
    t = t_array.tolist()
    lists = [tr.tolist() for tr in traces]
    step = int(JUDGE_S / SAMPLE_S)
    other_first = False
    for end in range(step, len(t) + 1, step):
        room = room0 - sum(v[end - 1] - v[0] for v in lists)
        if room <= 0:
            return None, 0.0, other_first
        floors = [method.judge(t, v, end, room) for v in lists]
        worst = min(range(INSTANCES), key=floors.__getitem__)
        if floors[worst] < HORIZON_S:
            if worst == 0 and t[end - 1] >= leak_start:
                return t[end - 1] - leak_start, room / rate, other_first
            other_first = True
    return None, 0.0, other_first


def leak_cell(method, rate: float, trials: int, seed: int) -> str:
    rng = np.random.default_rng(seed + int(rate * 10))
    found = [leak_trial(method, rate, rng) for _ in range(trials)]
    named = [f for f in found if f[0] is not None]
    others = sum(f[2] for f in found)
    if not named:
        return f"never; {len(found)} missed; {others} other"
    times = np.array([f[0] for f in named])
    left = min(f[1] for f in named)
    return (f"{np.median(times):.0f} / {np.percentile(times, 95):.0f} s; {left:.0f} s left; "
            f"{len(found) - len(named)} missed; {others} other")


def _run(job):
    what, method, *rest = job
    return soak(method, *rest) if what == "soak" else leak_cell(method, *rest)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=2000.0, help="healthy instance-hours per method (default 2000)")
    parser.add_argument("--trials", type=int, default=40, help="leak trials per rate and method (default 40)")
    parser.add_argument("--sustain", default="30,60,120", help="steady-growth spans to compare, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    args = parser.parse_args(argv)
    methods = [Linear(), Steady(defaults.TREND_MIN_SPAN_S, evidence=0.0)] + [Steady(float(s)) for s in args.sustain.split(",")]
    started = time.monotonic()
    print(f"# eval_leak_blame: {args.hours:g} healthy instance-hours and {args.trials} leak trials per rate, per method;")
    print(f"# judged every {JUDGE_S:g} s, horizon {HORIZON_S:g} s, window {WINDOW_S:g} s, seed {args.seed}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    soak_jobs = [("soak", m, kind, args.hours / len(SHAPES), args.seed + i) for m in methods for i, kind in enumerate(SHAPES)]
    leak_jobs = [("leak", m, rate, args.trials, args.seed) for rate in LEAK_RATES_MB_S for m in methods]
    with Pool(args.jobs) as pool:
        outcomes = pool.map(_run, soak_jobs + leak_jobs, chunksize=1)
    soaked = {(job[1].name, job[2]): found for job, found in zip(soak_jobs, outcomes)}
    cells = dict(zip(((job[1].name, job[2]) for job in leak_jobs), outcomes[len(soak_jobs):]))
    print()
    print("False blames of healthy instances: episodes per 1,000 instance-hours (share of verdicts)")
    print()
    print("| shape | " + " | ".join(m.name for m in methods) + " |")
    print("|---|" + "---:|" * len(methods))
    for kind in SHAPES + ("all",):
        row = []
        for m in methods:
            rows = [soaked[(m.name, k)] for k in (SHAPES if kind == "all" else (kind,))]
            hours = sum(r[0] for r in rows)
            episodes, verdicts, blamed = (sum(r[i] for r in rows) for i in (1, 2, 3))
            row.append(f"{1000 * episodes / hours:.1f} ({100 * blamed / verdicts:.2f} %)")
        print(f"| {kind} | " + " | ".join(row) + " |")
    print()
    print(f"Leaks, {args.trials} trials per rate: 8 GB of headroom; the leaking instance is one of {INSTANCES}, each of a")
    print("random healthy shape; the leak starts with the warm-up or 5-30 min later. Named after (median / p95 seconds")
    print("from the leak's start); least time left to the floor when named; trials that reached the floor unnamed;")
    print("trials where another instance was named first.")
    print()
    print("| leak | floor after | " + " | ".join(m.name for m in methods) + " |")
    print("|---|---:|" + "---|" * len(methods))
    for rate in LEAK_RATES_MB_S:
        print(f"| {rate:g} MB/s | {8 * 1024 / rate:.0f} s | " + " | ".join(cells[(m.name, rate)] for m in methods) + " |")
    print()
    print(f"# {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
