"""Standard load runs: the guarded and unguarded pipeline under perf_analyzer, and one fault.

    .venv/bin/python scripts/load_runs.py [--measurement-ms 5000]
        [--concurrency 1,4,16,64] [--out out/load-runs]

One tritonserver in chaos mode (free ports, the project's model_repository
with the production guard defaults, plus the `chaos` control model), warmed
up, then perf_analyzer over gRPC with real digits (bench/digits_perf_input.json):

1. The matrix: at each concurrency, `pipeline_unguarded` and `pipeline`
   (the guard as its own ensemble step) back to back, the first of the two
   alternating from one concurrency to the next so that noise on a shared
   machine lands on both alike. An unstable measurement is taken once more
   with the window doubled (triton_guard.perf.measure).
2. One run under a fault: `triton-guard chaos slow --slow-ms 20` on the
   classifier (every execute 20 ms longer), `pipeline` at concurrency 16,
   then `triton-guard chaos clear`. Reported beside the clean concurrency-16
   figures of `pipeline`, as ratios to them.

Why `slow` and no other fault: perf_analyzer 2.51 aborts a measurement at
the first failed request and reports nothing, so only a fault that keeps
every request successful can be measured this way. A hang or an error makes
the guard time out, fail and open the breaker, i.e. fail requests by design:
those are measured by scripts/replay_incident.py and the chaos suite
(tests/integration/test_chaos.py), which count failures instead of timing
successes. 20 ms stays far below the guard's slow-call limit (slow_call_ms
5000) and its timeout (timeout_ms 10000), so the breaker stays CLOSED and
the run shows what a slower upstream costs a caller through the guard.

Chaos mode is on for the whole run, clean cells included, so both variants
pay the same per-execute check of the classifier's chaos hook (one read of
a file that does not exist) and the clean and fault figures come from the
same server.

Writes report.md (the tables), report.png (throughput and p99 against
concurrency for both variants, the fault run marked), results.json and
tritonserver.log to OUT/<timestamp>/ (out/ is not committed) and prints the
report. Exit status 1 if any cell measured nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing

from triton_guard import defaults  # noqa: E402
from triton_guard.perf import measure, source_revision, start_run, warm_up  # noqa: E402
from triton_guard.server import LocalServer, Ports  # noqa: E402

MODEL_REPOSITORY = REPO_ROOT / "model_repository"
INPUT_DATA = REPO_ROOT / "bench" / "digits_perf_input.json"
OUT_DIR = REPO_ROOT / "out" / "load-runs"

BASELINE = "unguarded"
GUARDED = "guarded"
VARIANTS = {BASELINE: "pipeline_unguarded", GUARDED: "pipeline"}  # variant -> ensemble

CONCURRENCIES = (1, 4, 16, 64)
MEASUREMENT_MS = 5000

FAULT = "slow"  # the one fault that keeps every request successful (see the docstring)
FAULT_SLOW_MS = 20
FAULT_MODEL = defaults.CHAOS_TARGET_MODEL  # classifier: the upstream behind the guard
FAULT_CONCURRENCY = 16
FAULT_VARIANT = GUARDED


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measurement-ms", type=int, default=MEASUREMENT_MS, help="perf_analyzer window")
    parser.add_argument(
        "--concurrency",
        type=lambda text: tuple(dict.fromkeys(int(c) for c in text.split(","))),
        default=CONCURRENCIES,
        help="comma-separated concurrencies (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="a timestamped run folder goes here")
    args = parser.parse_args()
    if args.measurement_ms <= 0 or min(args.concurrency) <= 0:
        parser.error("--measurement-ms and every --concurrency must be positive")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def describe(run: dict) -> str:
    if "error" in run:
        return run["error"]
    return f"{run['throughput']:.1f} infer/s, p50 {run['p50_us']} us, p99 {run['p99_us']} us"


# --- measuring ---------------------------------------------------------------------------


def ratios(run: dict | None, reference: dict | None) -> dict | None:
    """`run` over `reference`: throughput and p99; None unless both measured something."""
    if not run or not reference or "error" in run or "error" in reference:
        return None
    return {
        "throughput_ratio": run["throughput"] / reference["throughput"],
        "p99_ratio": run["p99_us"] / reference["p99_us"],
    }


def run_matrix(url: str, concurrencies: tuple[int, ...], measurement_ms: int) -> list[dict]:
    """One cell per (concurrency, variant), in that order, with the guarded/unguarded ratios."""
    names = list(VARIANTS)
    runs: dict[tuple[int, str], dict] = {}
    total = len(concurrencies) * len(names)
    for position, concurrency in enumerate(concurrencies):
        shift = position % len(names)  # alternate which variant runs first
        for variant in names[shift:] + names[:shift]:
            log(f"[{len(runs) + 1}/{total}] concurrency {concurrency}: {VARIANTS[variant]}")
            runs[concurrency, variant] = measure(VARIANTS[variant], url, concurrency, INPUT_DATA, measurement_ms, log=log)
            log(f"  {describe(runs[concurrency, variant])}")
    return [
        {
            "concurrency": concurrency,
            "variant": variant,
            "model": model,
            "result": runs[concurrency, variant],
            "ratios": None if variant == BASELINE else ratios(runs[concurrency, variant], runs[concurrency, BASELINE]),
        }
        for concurrency in concurrencies
        for variant, model in VARIANTS.items()
    ]


def chaos_cli(url: str, *args: str) -> dict:
    """`triton-guard chaos ARGS --model classifier --url URL`, run as a person would run it."""
    cmd = [sys.executable, "-m", "triton_guard.cli", "chaos", *args, "--model", FAULT_MODEL, "--url", url]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT / "src"), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    output = (proc.stdout + proc.stderr).strip()
    log(f"  triton-guard chaos {' '.join(args)}: {output} (exit {proc.returncode})")
    return {"command": ["triton-guard", *cmd[3:]], "exit": proc.returncode, "output": output}


def run_fault(url: str, measurement_ms: int, clean: dict | None) -> dict:
    """`pipeline` at FAULT_CONCURRENCY with the classifier slowed; the fault is cleared whatever happens."""
    model = VARIANTS[FAULT_VARIANT]
    fault = {
        "fault": FAULT,
        "slow_ms": FAULT_SLOW_MS,
        "target_model": FAULT_MODEL,
        "concurrency": FAULT_CONCURRENCY,
        "variant": FAULT_VARIANT,
        "model": model,
        "clean": clean,
    }
    log(f"fault: {FAULT} +{FAULT_SLOW_MS} ms on {FAULT_MODEL}, {model} at concurrency {FAULT_CONCURRENCY}")
    inject = chaos_cli(url, FAULT, "--slow-ms", str(FAULT_SLOW_MS))
    try:
        if inject["exit"] != 0:
            fault["result"] = {"error": f"could not inject the fault: {inject['output']}"}
        else:
            fault["result"] = measure(model, url, FAULT_CONCURRENCY, INPUT_DATA, measurement_ms, log=log)
            log(f"  {describe(fault['result'])}")
    finally:
        clear = chaos_cli(url, "clear")
    fault["chaos_commands"] = [inject, clear]
    fault["cleared"] = clear["exit"] == 0
    fault["ratios_to_clean"] = ratios(fault["result"], clean)
    return fault


# --- report ------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def result_columns(run: dict | None) -> str:
    """throughput | p50 | p90 | p99 (ms), or why there is none."""
    if run is None:
        return "not run | — | — | —"
    if "error" in run:
        return f"{'unstable' if run.get('unstable') else 'failed'} | — | — | —"
    return (
        f"{run['throughput']:.1f} | {run['p50_us'] / 1000:.2f} | {run['p90_us'] / 1000:.2f} "
        f"| {run['p99_us'] / 1000:.2f}"
    )


def render_report(results: dict) -> str:
    settings, machine = results["settings"], results["machine"]
    lines = [
        f"# Load runs {results['started']}",
        "",
        f"Commit {results['commit']}; {machine['cpus']} CPUs, load average {machine['loadavg_start']:.2f} "
        f"at start, {machine['loadavg_end']:.2f} at end. One tritonserver (chaos mode, production guard "
        f"defaults), perf_analyzer 2.51 over gRPC, {settings['measurement_ms']} ms windows (an unstable "
        "cell is measured once more with the window doubled); ratios are guarded/unguarded at the same "
        "concurrency.",
        "",
        "| concurrency | variant | throughput (infer/s) | p50 (ms) | p90 (ms) | p99 (ms) "
        "| throughput ratio | p99 ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in results["cells"]:
        cell_ratios = cell["ratios"] or {}
        lines.append(
            f"| {cell['concurrency']} | {cell['variant']} (`{cell['model']}`) | {result_columns(cell['result'])} "
            f"| {fmt(cell_ratios.get('throughput_ratio'))} | {fmt(cell_ratios.get('p99_ratio'))} |"
        )
    fault = results["fault"]
    fault_ratios = fault["ratios_to_clean"] or {}
    lines += [
        "",
        f"## Under a fault: `{fault['fault']}` +{fault['slow_ms']} ms on `{fault['target_model']}`",
        "",
        f"`triton-guard chaos {fault['fault']} --slow-ms {fault['slow_ms']}`, then `{fault['model']}` at "
        f"concurrency {fault['concurrency']}, then `triton-guard chaos clear`"
        + ("" if fault["cleared"] else " (**clear failed**)")
        + ". Ratios are to the clean run of the same model at the same concurrency above.",
        "",
        "| concurrency | run | throughput (infer/s) | p50 (ms) | p90 (ms) | p99 (ms) "
        "| throughput ratio | p99 ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
        f"| {fault['concurrency']} | {fault['variant']} (`{fault['model']}`), clean "
        f"| {result_columns(fault['clean'])} | 1.00 | 1.00 |",
        f"| {fault['concurrency']} | {fault['variant']} (`{fault['model']}`), {fault['fault']} "
        f"+{fault['slow_ms']} ms | {result_columns(fault['result'])} "
        f"| {fmt(fault_ratios.get('throughput_ratio'))} | {fmt(fault_ratios.get('p99_ratio'))} |",
        "",
        "Only `slow` is measured here: perf_analyzer aborts at the first failed request, and a hang or "
        "an error fails requests by design (the guard times out and opens). Those are measured by "
        "scripts/replay_incident.py and the chaos suite.",
    ]
    if fault["clean"] is None:
        lines += ["", f"(Concurrency {fault['concurrency']} was not in this run's matrix: no clean figures.)"]
    failures = [
        f"- concurrency {c['concurrency']} `{c['model']}`: {c['result']['error']}"
        for c in results["cells"]
        if "error" in c["result"]
    ]
    if "error" in fault["result"]:
        failures.append(f"- fault run, `{fault['model']}`: {fault['result']['error']}")
    if failures:
        lines += ["", "perf_analyzer runs that measured nothing:", "", *failures]
    lines += ["", "![throughput and p99 against concurrency](report.png)"]
    return "\n".join(lines) + "\n"


def render_plot(results: dict, path: Path) -> None:
    """Throughput and p99 against concurrency, one line per variant, the fault run as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    fig, (ax_tp, ax_p99) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {BASELINE: {"color": "tab:blue", "marker": "o"}, GUARDED: {"color": "tab:orange", "marker": "s"}}
    for variant, model in VARIANTS.items():
        cells = [
            c for c in results["cells"] if c["variant"] == variant and "error" not in c["result"]
        ]
        xs = [c["concurrency"] for c in cells]
        label = f"{variant} ({model})"
        ax_tp.plot(xs, [c["result"]["throughput"] for c in cells], label=label, **styles[variant])
        ax_p99.plot(xs, [c["result"]["p99_us"] / 1000 for c in cells], label=label, **styles[variant])
    fault = results["fault"]
    if "error" not in fault["result"]:
        label = f"{fault['variant']}, {fault['fault']} +{fault['slow_ms']} ms on {fault['target_model']}"
        marker = {"color": "tab:red", "marker": "X", "s": 110, "zorder": 5, "label": label}
        ax_tp.scatter([fault["concurrency"]], [fault["result"]["throughput"]], **marker)
        ax_p99.scatter([fault["concurrency"]], [fault["result"]["p99_us"] / 1000], **marker)
    concurrencies = results["settings"]["concurrency"]
    for ax, ylabel in ((ax_tp, "throughput (infer/s)"), (ax_p99, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(concurrencies) | {fault["concurrency"]}))
        ax.get_xaxis().set_major_formatter(ScalarFormatter())
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    ax_tp.set_title("throughput")
    ax_p99.set_title("p99 latency")
    ax_p99.legend(fontsize=8, loc="upper left")
    fig.suptitle(
        f"Load runs {results['started']} ({results['settings']['measurement_ms']} ms windows, "
        f"{results['machine']['cpus']} CPUs)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    args = parse_args()
    started, run_dir, loadavg_start = start_run(args.out)
    with open(run_dir / "tritonserver.log", "w") as server_log:
        server = LocalServer(model_repository=MODEL_REPOSITORY, ports=Ports.free(), log=server_log, chaos=True)
        log(f"starting tritonserver with chaos mode (log: {run_dir / 'tritonserver.log'})")
        with server:
            warm_concurrency = max(max(args.concurrency), FAULT_CONCURRENCY)
            for model in VARIANTS.values():
                log(f"warm-up: {model} at concurrency {warm_concurrency}")
                error = warm_up(model, server.grpc_url, warm_concurrency, INPUT_DATA, args.measurement_ms)
                if error is not None:  # only the load matters here, not the numbers
                    log(f"  (warm-up measured nothing: {error})")
            cells = run_matrix(server.grpc_url, args.concurrency, args.measurement_ms)
            clean = next(
                (c["result"] for c in cells if c["concurrency"] == FAULT_CONCURRENCY and c["variant"] == FAULT_VARIANT),
                None,
            )
            fault = run_fault(server.grpc_url, args.measurement_ms, clean)
    results = {
        "started": started,
        "commit": source_revision(REPO_ROOT),
        "machine": {"cpus": os.cpu_count(), "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg()[0]},
        "settings": {
            "measurement_ms": args.measurement_ms,
            "concurrency": list(args.concurrency),
            "variants": VARIANTS,
            "input_data": str(INPUT_DATA.relative_to(REPO_ROOT)),
            "chaos": True,
        },
        "cells": cells,
        "fault": fault,
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = render_report(results)
    (run_dir / "report.md").write_text(report)
    render_plot(results, run_dir / "report.png")
    print(report)
    log(f"written: {run_dir / 'report.md'}, {run_dir / 'report.png'}, {run_dir / 'results.json'}")
    measured_all = all("error" not in c["result"] for c in cells) and "error" not in fault["result"]
    return 0 if measured_all and fault["cleared"] else 1


if __name__ == "__main__":
    sys.exit(main())
