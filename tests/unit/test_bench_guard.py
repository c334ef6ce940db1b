"""scripts/bench_guard.py's scoring, on made-up runs: an untrusted baseline is not scored against, and says why."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_guard.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_guard_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def run(throughput, p50_ms, p99_ms, **extra):
    return {"concurrency": 16, "throughput": throughput, "p50_us": int(p50_ms * 1000), "p90_us": 0, "p95_us": 0,
            "p99_us": int(p99_ms * 1000), "server_queue_us": None, "server_compute_us": None, "cpu_s_per_1000": 1.0,
            **extra}  # fmt: skip


def cells(bench, baseline_runs, guarded_runs, concurrency=16):
    baseline = bench.median_result(baseline_runs)
    problem = bench.baseline_problem(baseline_runs, baseline, bench.MAX_BASELINE_TAIL)
    guarded = bench.median_result(guarded_runs)
    return [
        {"suite": "digits", "concurrency": concurrency, "variant": bench.BASELINE, "model": "pipeline_unguarded",
         "runs": baseline_runs, "median": baseline, "baseline_problem": problem, "ratios": None},
        {"suite": "digits", "concurrency": concurrency, "variant": bench.IN_PROCESS, "model": "pipeline",
         "runs": guarded_runs, "median": guarded, "baseline_problem": problem,
         "ratios": None if problem else bench.ratios(guarded, baseline)},
    ]  # fmt: skip


def target(bench, rows, concurrency=16):
    return next(r for r in rows if r["target"].startswith("digits, in-process") and f"concurrency {concurrency}" in r["target"])


def test_a_steady_baseline_is_scored_with_medians(bench):
    rows = bench.targets(cells(bench, [run(1000, 9, 15), run(1100, 9, 14), run(900, 10, 16)],
                               [run(970, 9.1, 15), run(960, 9.2, 15), run(200, 50, 90)]), {})  # fmt: skip
    row = target(bench, rows)
    assert row["value"] == pytest.approx(960 / 1000) and row["met"] is True and row["why_not_scored"] is None


def test_a_baseline_that_stalled_is_not_scored_and_the_report_says_why(bench):
    stalled = [run(1000, 9, 507.6), run(1000, 9, 500), run(1000, 9, 480)]
    made = cells(bench, stalled, [run(1600, 9, 15)] * 3)
    row = target(bench, bench.targets(made, {}))
    assert row["met"] is None and row["value"] is None
    assert "p99 (500.0 ms) is 55.6 times its p50 (9.00 ms)" in row["why_not_scored"]
    report = bench.render_report({
        "started": "now", "commit": "abc", "machine": {"cpus": 2, "loadavg_start": 0.5, "loadavg_end": 0.6},
        "settings": {"measurement_ms": 3000, "stability_percentage": 10, "repeats": 3, "suites": ["digits"]},
        "cells": made, "rejections": {}, "targets": bench.targets(made, {}),
    })  # fmt: skip
    assert "not scored: baseline not trusted: its p99" in report and "a stall, not a baseline" in report
    assert "1.60" not in report  # no ratio printed against it


def test_a_baseline_that_never_stabilised_is_not_scored(bench):
    unstable = [{"error": "Failed to obtain stable measurement", "unstable": True}] * 2 + [run(1000, 9, 15)]
    row = target(bench, bench.targets(cells(bench, unstable, [run(990, 9, 15)] * 3), {}))
    assert row["met"] is None and "2 of its 3 runs never stabilised" in row["why_not_scored"]
