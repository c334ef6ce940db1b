"""Queue configurations of the demo pipeline at concurrency 16 and 256, side by side on one server.

    .venv/bin/python scripts/bench_queues.py [--variants none,shipped,...] [--rounds 2]
        [--duration-s 5] [--concurrency 16,256] [--processes 2] [--out out/bench-queues]

One tritonserver (this checkout's LocalServer) on a repository holding, for
each variant V, a whole copy of the pipeline: preprocess__V ->
classifier__V (the in-process guard, as `pipeline`) -> postprocess__V, named
pipeline__V, and pipeline_unguarded__V (classifier_unguarded__V in the
middle). Only the variant's dynamic_batching and instance counts differ
(VARIANTS below); so every variant is measured in the same run, under the
same machine load, in rotated order over --rounds.

Each measurement: CONCURRENCY closed-loop gRPC clients
(triton_guard_demo.loadgen) for --duration-s, the first second discarded.
The table: answers/s, p50/p99/max latency of the answers, rejections/s,
server CPU (tritonserver and every stub) per 1,000 answers, and the goodput
ratios the project targets: each variant's answers at the top concurrency
over its own at the lowest, and the guarded pipeline over the unguarded one
at the top concurrency. About 5 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing
# ... and the server's Python stubs import this checkout's package too (LocalServer passes PYTHONPATH on).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")]))

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

from triton_guard.model_config import CONFIG_FILE, read_config  # noqa: E402
from triton_guard.server import LocalServer, Ports  # noqa: E402
from triton_guard_demo.loadgen import process_group_cpu_s, LoadSpec, heldout_images, run_load  # noqa: E402
from triton_guard_demo.repository import MODEL_REPOSITORY  # noqa: E402

OUT_DIR = REPO_ROOT / "out" / "bench-queues"
STEPS = ("preprocess", "classifier", "postprocess")  # pipeline's; pipeline_unguarded has classifier_unguarded
READY_TIMEOUT_S = 900.0  # a dozen stubs importing torch on a busy 2-core machine
QUEUE = 128  # the bound the shipped classifier had
QUEUE_TIMEOUT_US = 10_000_000  # its queue timeout (= the guard's timeout_ms)


def policy(size: int = 0, timeout_us: int = 0) -> mc.ModelQueuePolicy:
    return mc.ModelQueuePolicy(timeout_action=mc.ModelQueuePolicy.REJECT, default_timeout_microseconds=timeout_us,
                               allow_timeout_override=timeout_us > 0, max_queue_size=size)


def batching(size: int = 0, timeout_us: int = 0, levels: int = 0) -> mc.ModelDynamicBatching:
    """dynamic_batching with a default queue policy (if any limit) and `levels` priority levels (the last the default)."""
    db = mc.ModelDynamicBatching()
    if size or timeout_us:
        db.default_queue_policy.CopyFrom(policy(size, timeout_us))
    if levels:
        db.priority_levels, db.default_priority_level = levels, levels
    return db


# variant -> {step: (dynamic_batching, instance count or None)}; steps not named keep `dynamic_batching {}`.
CLASSIFIERS = ("classifier", "classifier_unguarded")
VARIANTS = {
    "none": {},  # no queue policy, no priority: the batcher prefetches
    "shipped": {m: (batching(QUEUE, QUEUE_TIMEOUT_US), None) for m in CLASSIFIERS},  # the demo at 99226d9
    "size": {m: (batching(QUEUE), None) for m in CLASSIFIERS},
    "size_2_instances": {m: (batching(QUEUE), 2) for m in CLASSIFIERS},
    "first_step_size": {"preprocess": (batching(QUEUE), None)},  # the earliest point a Triton queue can refuse
    "priority": {m: (batching(levels=2), None) for m in STEPS + ("classifier_unguarded",)},
    "priority_first_step_size": {**{m: (batching(levels=2), None) for m in STEPS + ("classifier_unguarded",)},
                                 "preprocess": (batching(QUEUE, levels=2), None)},
}


def variant_repository(target: Path, names: list[str], unguarded: list[str]) -> Path:
    """The chains of every variant, and the unguarded one of those named (no goldens: no canary load)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        pipelines = ("pipeline", "pipeline_unguarded") if name in unguarded else ("pipeline",)
        for step in STEPS + (("classifier_unguarded",) if name in unguarded else ()):
            copy = target / f"{step}__{name}"
            shutil.copytree(MODEL_REPOSITORY / step, copy, ignore=shutil.ignore_patterns("__pycache__", "goldens"))
            config = read_config(copy / CONFIG_FILE)
            config.name = copy.name
            db, instances = VARIANTS[name].get(step, (mc.ModelDynamicBatching(), None))
            config.dynamic_batching.CopyFrom(db)
            if instances:
                config.instance_group[0].count = instances
            (copy / CONFIG_FILE).write_text(text_format.MessageToString(config))
        for pipeline in pipelines:
            copy = target / f"{pipeline}__{name}"
            shutil.copytree(MODEL_REPOSITORY / pipeline, copy, ignore=shutil.ignore_patterns("goldens"))
            config = read_config(copy / CONFIG_FILE)
            config.name = copy.name
            for step in config.ensemble_scheduling.step:
                step.model_name = f"{step.model_name}__{name}"
            (copy / CONFIG_FILE).write_text(text_format.MessageToString(config))
    return target


def measure(server: LocalServer, model: str, clients: int, args, images, labels) -> dict:
    spec = LoadSpec(server.grpc_url, model=model, clients=clients, processes=min(args.processes, clients))
    cpu_before, started = process_group_cpu_s(server.process.pid), time.monotonic()
    result = run_load(spec, images, labels, args.duration_s)
    cpu = process_group_cpu_s(server.process.pid) - cpu_before
    wall = time.monotonic() - started
    kept = result.totals(first=1, last=int(args.duration_s) - 1)
    seconds = max(1, int(args.duration_s) - 1)
    latencies = sorted(kept.latencies_ms)
    answered = sum(row.answers for row in result.rows())
    return {
        "answers_s": kept.answers / seconds,
        "rejected_s": sum(kept.errors.values()) / seconds,
        "errors": dict(kept.errors),
        "p50_ms": statistics.median(latencies) if latencies else None,
        "p99_ms": kept.p99_ms(),
        "max_ms": latencies[-1] if latencies else None,
        "server_cpu_ms_per_1000": cpu * 1e6 / answered if answered else None,
        "server_cores": cpu / wall,
        "client_cores": result.client_cpu_s / result.wall_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--concurrency", default="16,256")
    parser.add_argument("--unguarded", default="none,shipped", help="variants whose pipeline_unguarded is measured too")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    levels = [int(c) for c in args.concurrency.split(",")]
    runs = [(f"pipeline__{v}", c) for v in names for c in levels]
    unguarded = [v for v in args.unguarded.split(",") if v in names]
    runs += [(f"pipeline_unguarded__{v}", max(levels)) for v in unguarded]
    images, labels = heldout_images()
    results: dict[tuple[str, int], list[dict]] = {}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-queues-") as tmp:
        repository = variant_repository(Path(tmp) / "models", names, unguarded)
        with open(Path(tmp) / "tritonserver.log", "w") as log:
            server = LocalServer(repository, ports=Ports.free(), log=log, extra_args=("--exit-timeout-secs=3",))
            server.start(ready_timeout_s=READY_TIMEOUT_S)
            try:
                for model, _ in runs:  # first calls (torch warm-up) stay out of the figures
                    run_load(LoadSpec(server.grpc_url, model=model, clients=4, processes=1), images, labels, 1.0)
                for round_ in range(args.rounds):
                    shift = round_ * max(1, len(runs) // args.rounds)
                    for model, clients in runs[shift:] + runs[:shift]:
                        row = measure(server, model, clients, args, images, labels)
                        results.setdefault((model, clients), []).append(row)
                        print(f"round {round_ + 1}: {model} c={clients}: {row['answers_s']:.0f}/s "
                              f"p99 {row['p99_ms'] or 0:.0f} ms, rejected {row['rejected_s']:.0f}/s", file=sys.stderr, flush=True)
            finally:
                server.stop()
    print(render(results, names, levels, args, load_start, os.getloadavg()))
    return 0


def _median(rows: list[dict], key: str):
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if values else None


def render(results, names, levels, args, load_start, load_end) -> str:
    top, low = max(levels), min(levels)
    lines = [
        f"# scripts/bench_queues.py {' '.join(sys.argv[1:])}",
        f"{args.rounds} rounds of {args.duration_s:g} s (rotated), medians; load average {load_start[0]:.2f} at the "
        f"start, {load_end[0]:.2f} at the end; {os.cpu_count()} CPUs; the server on the same machine as the clients.",
        "",
        "| variant | model | c | answers/s | x own c" + str(low) + " | p50 ms | p99 ms | max ms | rejected/s "
        "| server cores | server CPU ms per 1,000 answers | client cores |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for (model, clients), rows in results.items():
        variant = model.split("__", 1)[1]
        base = results.get((f"pipeline__{variant}", low)) if model.startswith("pipeline__") else None
        ratio = _median(rows, "answers_s") / _median(base, "answers_s") if base and _median(base, "answers_s") else None
        lines.append(
            f"| {variant} | {model.split('__')[0]} | {clients} | {fmt(_median(rows, 'answers_s'), ',.0f')} | "
            f"{fmt(ratio, '.2f')} | {fmt(_median(rows, 'p50_ms'), '.1f')} | {fmt(_median(rows, 'p99_ms'), '.0f')} | "
            f"{fmt(max((r['max_ms'] or 0) for r in rows), '.0f')} | {fmt(_median(rows, 'rejected_s'), ',.0f')} | "
            f"{fmt(_median(rows, 'server_cores'), '.2f')} | {fmt(_median(rows, 'server_cpu_ms_per_1000'), ',.0f')} | "
            f"{fmt(_median(rows, 'client_cores'), '.2f')} |")
    lines.append("")
    for variant in names:
        guarded = results.get((f"pipeline__{variant}", top))
        unguarded = results.get((f"pipeline_unguarded__{variant}", top))
        if guarded and unguarded:
            lines.append(f"- {variant}: guarded / unguarded at c={top}: "
                         f"{_median(guarded, 'answers_s') / _median(unguarded, 'answers_s'):.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
