"""Guard benchmark: what each placement of the guard costs, beside a light and a heavier model.

    .venv/bin/python scripts/bench_guard.py [--measurement-ms 3000]
        [--concurrency 1,16] [--repeats 3] [--suites digits,cnn] [--out out/bench-guard]

Two suites, one tritonserver each (free ports), perf_analyzer over gRPC with
real digits. Every suite serves the same steps four ways that differ only in
the guard: unguarded (the baseline), in-process (the model guarded in its own
stub: `backend: "guard"` with its own model.py), guard step (a `guard` model
calling the model through BLS) and library call (a guarded BLS call inside
preprocessing).

* digits: the project's model_repository (`pipeline_unguarded`, `pipeline`,
  `pipeline_guard_step`, `pipeline_inline`), a torch MLP of ~0.1 ms a batch.
* cnn: bench/heavy_repository, a small torch CNN of ~2 ms an image on one
  CPU thread (`heavy_unguarded`, `heavy`, `heavy_guard_step`, `heavy_inline`),
  to show how the ratios move with the model's cost.

All placements of a suite run on one server, at each concurrency back to back
in an order rotated round by round, so that noise on a shared machine lands
on all of them alike; --repeats N (at least 3 for figures worth quoting) runs
the whole matrix N times and keeps the median of each number per cell. Each
run also reads the CPU time of tritonserver and all its stubs from /proc and
the ensemble's request count from Triton's statistics (server CPU seconds per
1,000 requests), and the load average at its start.

A baseline that cannot be trusted is not scored against: a cell whose
perf_analyzer windows never agreed (even with the window doubled), or whose
p99 is more than --max-baseline-tail times its p50 (a stall, such as the
queue-timeout stall of Triton 24.10 in docs/triton-2.51.md); the report says
which, and why, instead of printing a ratio.

Then, in the digits suite, each guard's breaker is forced OPEN (the operator's
override, through the server's shared state) and sequential requests
(concurrency 1) time the rejection client-side, and server-side from Triton's
statistics of the guarding model (mean only: Triton keeps sums).

Writes report.md, results.json and the servers' logs to OUT/<timestamp>/ and
prints the report. The issue's targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing

import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from triton_guard.guard.breaker import CircuitBreaker  # noqa: E402
from triton_guard.guard.config import GuardConfig  # noqa: E402
from triton_guard.guard.policy import UNAVAILABLE_PREFIX  # noqa: E402
from triton_guard.guard.record import Override  # noqa: E402
from triton_guard.perf import PerfAnalyzerError, PerfResult, run_perf_analyzer, source_revision, start_run, warm_up  # noqa: E402
from triton_guard.server import LocalServer, Ports  # noqa: E402
from triton_guard.guard.shared_state import SharedFileStore  # noqa: E402

INPUT_DATA = REPO_ROOT / "bench" / "digits_perf_input.json"
OUT_DIR = REPO_ROOT / "out" / "bench-guard"

BASELINE = "unguarded"
IN_PROCESS = "in-process"
GUARD_STEP = "guard step"
LIBRARY = "library call"


@dataclasses.dataclass(frozen=True)
class Suite:
    repository: Path
    ensembles: dict  # placement -> ensemble; the same steps but for the guard
    model_note: str


SUITES = {
    "digits": Suite(
        REPO_ROOT / "model_repository",
        {BASELINE: "pipeline_unguarded", IN_PROCESS: "pipeline", GUARD_STEP: "pipeline_guard_step",
         LIBRARY: "pipeline_inline"},
        "torch MLP 64-128-10 (model_repository)",
    ),
    "cnn": Suite(
        REPO_ROOT / "bench" / "heavy_repository",
        {BASELINE: "heavy_unguarded", IN_PROCESS: "heavy", GUARD_STEP: "heavy_guard_step",
         LIBRARY: "heavy_inline"},
        "torch CNN, ~2 ms an image on one thread (bench/heavy_repository)",
    ),
}  # fmt: skip

# Fast rejections (digits suite): placement -> (ensemble called, breaker name, model whose statistics time it).
REJECTION_PATHS = {
    IN_PROCESS: ("pipeline", "classifier", "classifier"),
    GUARD_STEP: ("pipeline_guard_step", "classifier_unguarded", "classifier_guard"),
}

CONCURRENCIES = (1, 16)
MEASUREMENT_MS = 3000
REPEATS = 3
MAX_BASELINE_TAIL = 10.0  # a baseline whose p99 is more than this times its p50 stalled (24.10's queue stall: 50x): not scored against
REJECTIONS = 500  # sequential requests timed with the breaker OPEN, per placement
STABILITY_PERCENTAGE = 10  # perf_analyzer's default: its windows must agree within this
UNSTABLE_RETRIES = 1  # an unstable cell is measured once more with the window doubled


@dataclasses.dataclass(frozen=True)
class Target:
    """One of issue 20's targets: `what` of `placement` against the baseline at `concurrency`."""

    suite: str
    placement: str
    concurrency: int
    what: str  # throughput_ratio, added_p50_ms
    op: str  # >= or <=
    limit: float


# Issue 20: in-process >= 0.95x at c=16 and <= 0.15 ms added at c=1; the guard
# step and the library call with their loss of issue 12's table at least halved.
TARGETS = (
    Target("digits", IN_PROCESS, 16, "throughput_ratio", ">=", 0.95),
    Target("digits", IN_PROCESS, 1, "added_p50_ms", "<=", 0.15),
    Target("digits", GUARD_STEP, 16, "throughput_ratio", ">=", 0.85),
    Target("digits", GUARD_STEP, 1, "added_p50_ms", "<=", 0.4),
    Target("digits", LIBRARY, 16, "throughput_ratio", ">=", 0.95),
    Target("digits", LIBRARY, 1, "added_p50_ms", "<=", 0.25),
    Target("cnn", IN_PROCESS, 16, "throughput_ratio", ">=", 0.95),
    Target("cnn", IN_PROCESS, 1, "added_p50_ms", "<=", 0.15),
)
TARGET_REJECTION_P99_MS = 2.0  # client-side, breaker OPEN, concurrency 1, at most (issue 12)


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to; the message says what happened."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measurement-ms", type=int, default=MEASUREMENT_MS, help="perf_analyzer window")
    parser.add_argument(
        "--concurrency",
        type=lambda text: tuple(dict.fromkeys(int(c) for c in text.split(","))),
        default=CONCURRENCIES,
        help="comma-separated concurrencies (default: %(default)s)",
    )
    parser.add_argument("--repeats", type=int, default=REPEATS, help="whole-matrix repeats; median per cell")
    parser.add_argument(
        "--suites", type=lambda text: tuple(dict.fromkeys(text.split(","))), default=tuple(SUITES),
        help=f"comma-separated, of {', '.join(SUITES)} (default: all)",
    )
    parser.add_argument(
        "--stability-percentage", type=int, default=STABILITY_PERCENTAGE,
        help="perf_analyzer's window agreement (default %(default)s; a loaded shared machine may need more)",
    )
    parser.add_argument("--rejections", type=int, default=REJECTIONS, help="requests timed with the breaker OPEN")
    parser.add_argument(
        "--max-baseline-tail", type=float, default=MAX_BASELINE_TAIL,
        help="a baseline whose p99 exceeds this times its p50 is not scored against (default %(default)s)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="a timestamped run folder goes here")
    args = parser.parse_args()
    if args.measurement_ms <= 0 or args.repeats <= 0 or min(args.concurrency) <= 0 or args.rejections <= 0:
        parser.error("--measurement-ms, --repeats, --rejections and every --concurrency must be positive")
    unknown = sorted(set(args.suites) - set(SUITES))
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; known: {', '.join(SUITES)}")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- server CPU ----------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids) -> float:
    """utime + stime of these processes (tritonserver and its stubs), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone: a stub that died does not count from now on
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / CLOCK_TICKS


def success_count(client: grpcclient.InferenceServerClient, model: str) -> int:
    reply = client.get_inference_statistics(model, as_json=True)
    (stats,) = [m["inference_stats"] for m in reply["model_stats"] if m["name"] == model]
    return int(stats.get("success", {}).get("count", 0))


# --- throughput and latency ------------------------------------------------------------


def median_result(runs: list[dict]) -> dict | None:
    """Per-number median over the runs that measured something; None if none did."""
    measured = [run for run in runs if "error" not in run]
    if not measured:
        return None
    median = {}
    for field in [f.name for f in dataclasses.fields(PerfResult)] + ["cpu_s_per_1000"]:
        values = [run.get(field) for run in measured]
        if None in values:
            median[field] = None
        elif field in ("throughput", "cpu_s_per_1000"):
            median[field] = statistics.median(values)
        else:
            median[field] = round(statistics.median(values))
    return median


def ratios(guarded: dict | None, baseline: dict | None) -> dict | None:
    if guarded is None or baseline is None:
        return None
    cpu = guarded.get("cpu_s_per_1000"), baseline.get("cpu_s_per_1000")
    return {
        "throughput_ratio": guarded["throughput"] / baseline["throughput"],
        "p99_ratio": guarded["p99_us"] / baseline["p99_us"],
        "added_p50_ms": (guarded["p50_us"] - baseline["p50_us"]) / 1000,
        "cpu_ratio": cpu[0] / cpu[1] if None not in cpu and cpu[1] > 0 else None,
    }


def measure(model: str, url: str, concurrency: int, measurement_ms: int, stability_percentage: int) -> dict:
    """One cell, never raising: the PerfResult as a dict, or {"error": ..., "unstable": bool}."""
    window_ms, extra = measurement_ms, ["--stability-percentage", str(stability_percentage)]
    for attempt in range(UNSTABLE_RETRIES + 1):
        try:
            result = run_perf_analyzer(model, url, concurrency, INPUT_DATA, window_ms, extra)
            return {**result.to_dict(), "measurement_ms": window_ms}
        except PerfAnalyzerError as exc:
            if not exc.unstable or attempt == UNSTABLE_RETRIES:
                return {"error": str(exc), "unstable": exc.unstable, "measurement_ms": window_ms}
        window_ms *= 2
        log(f"  unstable; again with a {window_ms} ms window")


def measure_cell(server: LocalServer, model: str, concurrency: int, measurement_ms: int, stability: int) -> dict:
    """One perf_analyzer run, with the server's CPU seconds per 1,000 requests over the same span."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    pids = [server.process.pid, *server.stub_pids().values()]
    count_before, cpu_before = success_count(client, model), cpu_seconds(pids)
    run = measure(model, server.grpc_url, concurrency, measurement_ms, stability)
    cpu, requests = cpu_seconds(pids) - cpu_before, success_count(client, model) - count_before
    client.close()
    run["server_cpu_s"], run["server_requests"] = cpu, requests
    run["cpu_s_per_1000"] = cpu / requests * 1000 if requests else None
    return run


def run_matrix(server: LocalServer, suite: str, concurrencies, measurement_ms: int, repeats: int,
               stability: int, max_tail: float) -> list[dict]:
    """Every (concurrency, placement) cell of a suite with its runs, median and ratios to the baseline."""
    ensembles = SUITES[suite].ensembles
    runs: dict[tuple[int, str], list[dict]] = {(c, v): [] for c in concurrencies for v in ensembles}
    names = list(ensembles)
    total, done = len(runs) * repeats, 0
    for repeat in range(repeats):
        for position, concurrency in enumerate(concurrencies):
            # Rotate the order so that no placement always runs first (or right after another).
            shift = (repeat + position) % len(names)
            for variant in names[shift:] + names[:shift]:
                done += 1
                load = os.getloadavg()[0]
                log(f"[{suite} {done}/{total}] concurrency {concurrency}: {ensembles[variant]} (load average {load:.2f})")
                run = measure_cell(server, ensembles[variant], concurrency, measurement_ms, stability)
                run["loadavg"] = load
                if "error" in run:
                    log(f"  {run['error']}")
                else:
                    log(f"  {run['throughput']:.1f} infer/s, p50 {run['p50_us']} us, p99 {run['p99_us']} us, "
                        f"server CPU {fmt(run['cpu_s_per_1000'])} s per 1000")
                runs[concurrency, variant].append(run)
    cells = []
    for concurrency in concurrencies:
        baseline = median_result(runs[concurrency, BASELINE])
        distrust = baseline_problem(runs[concurrency, BASELINE], baseline, max_tail)
        for variant, model in ensembles.items():
            median = median_result(runs[concurrency, variant])
            cells.append(
                {
                    "suite": suite,
                    "concurrency": concurrency,
                    "variant": variant,
                    "model": model,
                    "runs": runs[concurrency, variant],
                    "median": median,
                    "baseline_problem": distrust,
                    "ratios": None if variant == BASELINE or distrust else ratios(median, baseline),
                }
            )
    return cells


def baseline_problem(runs: list[dict], median: dict | None, max_tail: float) -> str | None:
    """Why a baseline cannot be scored against (the report prints it), or None."""
    unstable = [run for run in runs if run.get("unstable")]
    if median is None:
        return "it measured nothing" + (": perf_analyzer's windows never agreed, even doubled" if unstable else "")
    if unstable:
        return f"{len(unstable)} of its {len(runs)} runs never stabilised (perf_analyzer's windows disagreed, even doubled)"
    tail = median["p99_us"] / max(median["p50_us"], 1)
    if tail > max_tail:
        return (f"its p99 ({median['p99_us'] / 1000:.1f} ms) is {tail:.1f} times its p50 ({median['p50_us'] / 1000:.2f} ms), "
                f"over {max_tail:g}: a stall, not a baseline")  # fmt: skip
    return None


# --- fast rejections -----------------------------------------------------------------


def model_stats(client: grpcclient.InferenceServerClient, model: str) -> dict[str, int]:
    """Cumulative success/fail counts and durations (ns) Triton keeps for a model.

    Triton 2.51 counts a guard rejection as a *success* of the guarding model
    (the Python model ran and sent a response; that it carries an error does
    not matter), so both are read.
    """
    reply = client.get_inference_statistics(model, as_json=True)
    (stats,) = [m["inference_stats"] for m in reply["model_stats"] if m["name"] == model]
    return {
        f"{kind}_{unit}": int(stats.get(kind, {}).get(unit, 0))
        for kind in ("success", "fail")
        for unit in ("count", "ns")
    }


def first_image() -> np.ndarray:
    entry = json.loads(INPUT_DATA.read_text())["data"][0]["IMAGE"]
    return np.array(entry["content"], dtype=np.uint8).reshape(1, *entry["shape"])


def _time_rejections(client, ensemble: str, guarding_model: str, image, count: int):
    """(client-side seconds of each rejection, the guarding model's statistics before and after)."""
    before = model_stats(client, guarding_model)
    latencies_s = []
    for _ in range(count):
        started = time.perf_counter()
        try:
            client.infer(ensemble, [image])
        except InferenceServerException as exc:
            latencies_s.append(time.perf_counter() - started)
            if exc.status() != "StatusCode.UNAVAILABLE" or UNAVAILABLE_PREFIX not in (exc.message() or ""):
                raise BenchError(f"expected a fast rejection, got {exc.status()}: {exc.message()}") from None
        else:
            raise BenchError(f"{ensemble} answered with the breaker OPEN")
    return latencies_s, before, model_stats(client, guarding_model)


def measure_rejections(server: LocalServer, placement: str, count: int) -> dict:
    """Client-side latency of each rejection, and Triton's server-side mean for them.

    With the breaker OPEN throughout, every request the guarding model
    executes meanwhile is a rejection, so its whole count and duration delta
    is theirs.
    """
    ensemble, breaker_name, guarding_model = REJECTION_PATHS[placement]
    # The operator's override pins it OPEN for the whole measurement (recovery_ms cannot end it).
    breaker = CircuitBreaker(breaker_name, GuardConfig(), SharedFileStore(server.state_dir))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    pixels = first_image()
    image = grpcclient.InferInput("IMAGE", list(pixels.shape), "UINT8")
    image.set_data_from_numpy(pixels)

    breaker.force(Override.FORCED_OPEN)
    try:
        latencies_s, before, after = _time_rejections(client, ensemble, guarding_model, image, count)
    finally:
        breaker.force(Override.AUTO)
    client.close()

    delta = {key: after[key] - before[key] for key in before}
    server_count = delta["success_count"] + delta["fail_count"]
    latencies_ms = np.array(latencies_s) * 1000
    return {
        "placement": placement,
        "ensemble": ensemble,
        "guarding_model": guarding_model,
        "requests": count,
        "client_p50_ms": float(np.percentile(latencies_ms, 50)),
        "client_p99_ms": float(np.percentile(latencies_ms, 99)),
        "client_max_ms": float(latencies_ms.max()),
        "server_stats_delta": delta,
        "server_count": server_count,
        "server_mean_ms": (delta["success_ns"] + delta["fail_ns"]) / server_count / 1e6 if server_count else None,
    }


# --- report ----------------------------------------------------------------------------


def targets(cells: list[dict], rejections: dict) -> list[dict]:
    """Each issue target with the measured value; not scored where the run did not measure it or its baseline is untrusted."""
    by_cell = {(c["suite"], c["concurrency"], c["variant"]): c for c in cells}
    rows = []
    for t in TARGETS:
        cell = by_cell.get((t.suite, t.concurrency, t.placement))
        model = SUITES[t.suite].ensembles[t.placement]
        name = f"{t.suite}, {t.placement} (`{model}`): {t.what.replace('_', ' ')} at concurrency {t.concurrency}"
        value = ((cell or {}).get("ratios") or {}).get(t.what)
        why = None
        if cell is None:
            why = "not measured in this run"
        elif cell["baseline_problem"]:
            why = f"baseline not trusted: {cell['baseline_problem']}"
        elif value is None:
            why = "this placement measured nothing"
        rows.append({"target": name, "value": value, "limit": f"{t.op} {t.limit}", "why_not_scored": why,
                     "met": None if why else (value >= t.limit if t.op == ">=" else value <= t.limit)})  # fmt: skip
    rejection = (rejections.get(IN_PROCESS) or {}).get("client_p99_ms")
    rows.append({"target": "digits, in-process (`pipeline`), breaker OPEN: rejection p99 client-side, concurrency 1 (ms)",
                 "value": rejection, "limit": f"<= {TARGET_REJECTION_P99_MS}", "why_not_scored": None if rejection else "not measured",
                 "met": None if rejection is None else rejection <= TARGET_REJECTION_P99_MS})  # fmt: skip
    return rows


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_report(results: dict) -> str:
    settings = results["settings"]
    loads = [run["loadavg"] for c in results["cells"] for run in c["runs"] if "loadavg" in run]
    lines = [
        f"# Guard benchmark {results['started']}",
        "",
        f"Commit {results['commit']}; {results['machine']['cpus']} CPUs, load average "
        f"{results['machine']['loadavg_start']:.2f} at start, {results['machine']['loadavg_end']:.2f} at end, "
        f"{fmt(min(loads, default=None))} to {fmt(max(loads, default=None))} at the start of the runs. "
        f"perf_analyzer over gRPC, {settings['measurement_ms']} ms windows agreeing within "
        f"{settings['stability_percentage']} %, median of {settings['repeats']} "
        "run(s) per cell; ratios are guarded/unguarded at the same concurrency in the same run. "
        "Server CPU: seconds of CPU (user + system) of tritonserver and all its stubs per 1,000 "
        "requests of the measured ensemble (the canary's own runs included, alike for all).",
    ]
    for suite in settings["suites"]:
        lines += [
            "",
            f"## {suite}: {SUITES[suite].model_note}",
            "",
            "| concurrency | placement | throughput (infer/s) | p50 (ms) | p99 (ms) | p99/p50 | server CPU s / 1000 req "
            "| throughput ratio | p99 ratio | added p50 (ms) | CPU ratio |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for cell in (c for c in results["cells"] if c["suite"] == suite):
            name = f"{cell['variant']} (`{cell['model']}`)"
            median, r = cell["median"], cell["ratios"] or {}
            if median is None:
                reason = "unstable" if all(run.get("unstable") for run in cell["runs"]) else "failed"
                lines.append(f"| {cell['concurrency']} | {name} | {reason} | — | — | — | — | — | — | — | — |")
                continue
            lines.append(
                f"| {cell['concurrency']} | {name} | {median['throughput']:.1f} | {median['p50_us'] / 1000:.2f} "
                f"| {median['p99_us'] / 1000:.2f} | {median['p99_us'] / max(median['p50_us'], 1):.1f} "
                f"| {fmt(median['cpu_s_per_1000'])} "
                f"| {fmt(r.get('throughput_ratio'))} | {fmt(r.get('p99_ratio'))} "
                f"| {fmt(r.get('added_p50_ms'))} | {fmt(r.get('cpu_ratio'))} |"
            )
    if results["rejections"]:
        lines += [
            "",
            "## Breaker OPEN (digits)",
            "",
            f"Sequential requests (concurrency 1, gRPC), the breaker forced OPEN; every one rejected with UNAVAILABLE. "
            "Server-side: the change in Triton's statistics of the guarding model over the rejections "
            "(Triton keeps sums only: a mean, no p99; the client-side p99 bounds it from above).",
            "",
            "| placement | ensemble called | client p50 (ms) | client p99 (ms) | client max (ms) "
            "| guarding model | server-side requests | server-side mean (ms) |",
            "|---|---|---:|---:|---:|---|---:|---:|",
        ]
        for placement, rej in results["rejections"].items():
            if "error" in rej:
                lines.append(f"| {placement} | measured nothing: {rej['error']} | | | | | | |")
                continue
            lines.append(
                f"| {placement} | `{rej['ensemble']}` | {rej['client_p50_ms']:.2f} | {rej['client_p99_ms']:.2f} "
                f"| {rej['client_max_ms']:.2f} | `{rej['guarding_model']}` | {rej['server_count']} "
                f"| {fmt(rej['server_mean_ms'], 3)} |"
            )
    lines += ["", "## Targets", "", "| target | measured | limit | met |", "|---|---:|---:|---|"]
    for row in results["targets"]:
        met = {True: "yes", False: "**no**", None: f"not scored: {row['why_not_scored']}"}[row["met"]]
        lines.append(f"| {row['target']} | {fmt(row['value'])} | {row['limit']} | {met} |")
    untrusted = sorted({(c["suite"], c["concurrency"], c["baseline_problem"]) for c in results["cells"] if c["baseline_problem"]})
    if untrusted:
        lines += ["", "Baselines not scored against (no ratio is printed for their concurrency):", ""]
        lines += [f"- {suite}, concurrency {c}: {why}" for suite, c, why in untrusted]
    failures = [
        f"- {c['suite']} concurrency {c['concurrency']} `{c['model']}`: {run['error']}"
        for c in results["cells"] for run in c["runs"] if "error" in run
    ]  # fmt: skip
    if failures:
        lines += ["", "perf_analyzer runs that measured nothing:", "", *failures]
    return "\n".join(lines) + "\n"


def run_suite(suite: str, args, run_dir: Path) -> tuple[list[dict], dict]:
    with open(run_dir / f"tritonserver-{suite}.log", "w") as server_log:
        server = LocalServer(model_repository=SUITES[suite].repository, ports=Ports.free(), log=server_log)
        log(f"{suite}: starting tritonserver (log: {run_dir / f'tritonserver-{suite}.log'})")
        with server:
            for model in SUITES[suite].ensembles.values():
                log(f"warm-up: {model}")
                error = warm_up(model, server.grpc_url, max(args.concurrency), INPUT_DATA, args.measurement_ms)
                if error is not None:  # only the load matters here, not the numbers
                    log(f"  (warm-up measured nothing: {error})")
            cells = run_matrix(server, suite, args.concurrency, args.measurement_ms, args.repeats,
                               args.stability_percentage, args.max_baseline_tail)
            rejections = {}
            if suite == "digits":
                for placement in REJECTION_PATHS:
                    log(f"breaker OPEN: {args.rejections} requests, {placement}")
                    try:
                        rejections[placement] = measure_rejections(server, placement, args.rejections)
                    except (BenchError, InferenceServerException) as exc:  # keep the matrix's results
                        rejections[placement] = {"error": str(exc)}
    return cells, rejections


def main() -> int:
    args = parse_args()
    started, run_dir, loadavg_start = start_run(args.out)
    cells, rejections = [], {}
    for suite in args.suites:
        suite_cells, suite_rejections = run_suite(suite, args, run_dir)
        cells += suite_cells
        rejections.update(suite_rejections)
    results = {
        "started": started,
        "commit": source_revision(REPO_ROOT),
        "command": " ".join(["scripts/bench_guard.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg()[0]},
        "settings": {
            "measurement_ms": args.measurement_ms,
            "concurrency": list(args.concurrency),
            "repeats": args.repeats,
            "stability_percentage": args.stability_percentage,
            "suites": list(args.suites),
            "ensembles": {s: SUITES[s].ensembles for s in args.suites},
            "input_data": str(INPUT_DATA.relative_to(REPO_ROOT)),
        },
        "cells": cells,
        "rejections": rejections,
        "targets": targets(cells, rejections),
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = render_report(results)
    (run_dir / "report.md").write_text(report)
    print(report)
    log(f"written: {run_dir / 'report.md'}, {run_dir / 'results.json'}")
    measured_all = all(c["median"] is not None for c in cells) and all("error" not in r for r in rejections.values())
    return 0 if measured_all else 1


if __name__ == "__main__":
    sys.exit(main())
