"""Soak: memory of the server and of every Python stub under steady load.

    .venv/bin/python scripts/soak.py [--duration-s 600] [--warmup-s 60]
        [--concurrency 4] [--out out/soak]

One tritonserver (LocalServer, free ports, the project's model_repository as
`triton-guard serve` runs it, no chaos). CONCURRENCY client threads (one gRPC
client each) call `pipeline` in a loop for --duration-s, one held-out digit
(IMAGE UINT8 [1, 8, 8]) per request, counting answers and errors.

Every 10 s the script samples the resident memory (VmRSS, from
/proc/<pid>/status) of the tritonserver process and of each Python backend
stub whose parent it is, each stub named by the model instance name on its
command line (e.g. `classifier_guard_0_1`), then runs the readiness probe
(ModelHealthValidator(url, timeout_s=4).check(), as the Deployment's
`triton-guard probe --timeout 4`). Stubs are looked up again at every sample,
so a stub that was restarted shows up with a new pid.

Per process: RSS at the first sample after the warm-up (start-up and first
calls allocate; they are not a leak), RSS at the last sample, the growth
between the two, and the growth rate in MB/hour from a least-squares line
(numpy.polyfit) through all post-warm-up samples. A "total" row sums every
process at each sample.

Writes report.md, rss.png, results.json and tritonserver.log to
OUT/<timestamp>/ and prints the report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing

import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from triton_guard_demo.digits import heldout_split, load_digits_uint8  # noqa: E402
from triton_guard.canary.instances import resident_bytes  # noqa: E402
from triton_guard.canary.probe import ModelHealthValidator  # noqa: E402
from triton_guard.perf import source_revision, start_run  # noqa: E402
from triton_guard.server import LocalServer, Ports, stub_pids  # noqa: E402

MODEL_REPOSITORY = REPO_ROOT / "model_repository"
OUT_DIR = REPO_ROOT / "out" / "soak"
PIPELINE = "pipeline"

DURATION_S = 600.0
WARMUP_S = 60.0
CONCURRENCY = 4
SAMPLE_PERIOD_S = 10.0  # RSS samples and readiness probes
PROBE_TIMEOUT_S = 4.0  # the Deployment's `triton-guard probe --timeout 4`
CLIENT_TIMEOUT_S = 30.0

SERVER_NAME = "tritonserver"
TOTAL_NAME = "total"
MB = 1 << 20
MESSAGES_KEPT = 8  # distinct error messages (numbers masked) kept


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=DURATION_S, help="load duration (default: %(default)s)")
    parser.add_argument(
        "--warmup-s", type=float, default=WARMUP_S, help="samples before this are not fitted (default: %(default)s)"
    )
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="client threads (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="a timestamped run folder goes here")
    args = parser.parse_args()
    if args.concurrency <= 0:
        parser.error("--concurrency must be positive")
    if not 0 <= args.warmup_s <= args.duration_s - 2 * SAMPLE_PERIOD_S:
        parser.error(f"need 0 <= --warmup-s <= --duration-s - {2 * SAMPLE_PERIOD_S:g} (two samples to fit a line)")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- processes -------------------------------------------------------------------------


def sample_rss(server_pid: int) -> dict[str, tuple[int, int]]:
    """Process name -> (pid, RSS bytes), the server first, then its stubs by name."""
    pids = {SERVER_NAME: server_pid, **dict(sorted(stub_pids(server_pid).items()))}
    sample = {}
    for name, pid in pids.items():
        rss = resident_bytes(pid)
        if rss is not None:
            sample[name] = (pid, rss)
    return sample


# --- load ------------------------------------------------------------------------------


class Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.errors = 0
        self.messages: Counter = Counter()

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.ok, self.errors


def load_worker(url: str, images: np.ndarray, offset: int, stride: int, counts: Counts, stop: threading.Event) -> None:
    client = grpcclient.InferenceServerClient(url)
    index = offset
    try:
        while not stop.is_set():
            image = grpcclient.InferInput("IMAGE", [1, 8, 8], "UINT8")
            image.set_data_from_numpy(images[index % len(images)][None])
            index += stride
            try:
                client.infer(PIPELINE, [image], client_timeout=CLIENT_TIMEOUT_S)
                error = None
            except InferenceServerException as exc:
                error = f"{exc.status()}: {exc.message() or exc}"
            with counts.lock:
                if error is None:
                    counts.ok += 1
                else:
                    counts.errors += 1
                    counts.messages[re.sub(r"\d+(\.\d+)?", "N", error)] += 1
    finally:
        client.close()


def run_soak(server: LocalServer, args: argparse.Namespace, images: np.ndarray) -> dict:
    """Samples (t, requests so far, RSS per process) and probes, every SAMPLE_PERIOD_S."""
    counts, stop = Counts(), threading.Event()
    loaders = [
        threading.Thread(
            target=load_worker, args=(server.grpc_url, images, i, args.concurrency, counts, stop), daemon=True
        )
        for i in range(args.concurrency)
    ]
    validator = ModelHealthValidator(server.grpc_url, timeout_s=PROBE_TIMEOUT_S)
    samples, probes = [], []
    t0 = time.monotonic()
    for thread in loaders:
        thread.start()
    try:
        for k in range(int(args.duration_s // SAMPLE_PERIOD_S) + 1):
            time.sleep(max(0.0, t0 + k * SAMPLE_PERIOD_S - time.monotonic()))
            t = time.monotonic() - t0
            ok, errors = counts.snapshot()
            rss = sample_rss(server.process.pid)
            samples.append({"t": t, "ok": ok, "errors": errors, "rss": rss})
            result = validator.check()
            probes.append({"t": t, "ready": result.ready, "health": result.health.value, "reasons": result.reasons})
            log(
                f"t={t:5.0f} s  {ok} ok, {errors} errors, {len(rss)} processes, "
                f"{sum(r for _, r in rss.values()) / MB:.0f} MB; probe {result.health.value}"
            )
    finally:
        stop.set()
        for thread in loaders:
            thread.join(CLIENT_TIMEOUT_S + 5)
    return {
        "samples": samples,
        "probes": probes,
        "requests": {"ok": counts.ok, "errors": counts.errors},
        "error_messages": counts.messages.most_common(MESSAGES_KEPT),
    }


# --- analysis --------------------------------------------------------------------------


def per_process(samples: list[dict], warmup_s: float) -> dict[str, dict]:
    """Start/end RSS after the warm-up, growth and least-squares growth rate per process and in total."""
    series: dict[str, list[tuple[float, int, int]]] = {}
    for s in samples:
        for name, (pid, rss) in s["rss"].items():
            series.setdefault(name, []).append((s["t"], pid, rss))
        series.setdefault(TOTAL_NAME, []).append((s["t"], 0, sum(rss for _, rss in s["rss"].values())))
    processes = {}
    for name, points in series.items():
        after = [(t, rss) for t, _, rss in points if t >= warmup_s]
        pids = sorted({pid for _, pid, _ in points if pid})
        entry = {"pids": pids, "samples": [[round(t, 2), rss] for t, _, rss in points]}
        if len(after) >= 2:
            t_h = np.array([t for t, _ in after]) / 3600
            rss_mb = np.array([rss for _, rss in after]) / MB
            entry.update(
                start_mb=float(rss_mb[0]),
                end_mb=float(rss_mb[-1]),
                growth_mb=float(rss_mb[-1] - rss_mb[0]),
                slope_mb_per_h=float(np.polyfit(t_h, rss_mb, 1)[0]),
                fitted_samples=len(after),
            )
        processes[name] = entry
    return processes


# --- report ----------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_report(results: dict) -> str:
    s, req = results["settings"], results["requests"]
    elapsed = results["samples"][-1]["t"]
    ready = sum(p["ready"] for p in results["probes"])
    lines = [
        f"# Soak {results['started']}",
        "",
        f"Commit {results['commit']}; {results['machine']['cpus']} CPUs, load average "
        f"{results['machine']['loadavg_start']:.2f} at start, {results['machine']['loadavg_end']:.2f} at end.",
        f"`{PIPELINE}` under {s['concurrency']} client threads for {elapsed:.0f} s; RSS (VmRSS) sampled every "
        f"{SAMPLE_PERIOD_S:g} s. Start = first sample at or after the {s['warmup_s']:g} s warm-up; growth rate = "
        "least-squares slope over the post-warm-up samples.",
        "",
        "| process | pid | RSS start (MB) | RSS end (MB) | growth (MB) | growth rate (MB/h) | samples fitted |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, p in results["processes"].items():
        pids = ", ".join(map(str, p["pids"])) + (" (restarted)" if len(p["pids"]) > 1 else "")
        lines.append(
            f"| {name} | {pids or '—'} | {fmt(p.get('start_mb'))} | {fmt(p.get('end_mb'))} "
            f"| {fmt(p.get('growth_mb'), 2)} | {fmt(p.get('slope_mb_per_h'), 2)} | {p.get('fitted_samples', 0)} |"
        )
    lines += [
        "",
        f"Requests served: {req['ok']} ({req['ok'] / elapsed:.1f}/s), errors: {req['errors']}. "
        f"Readiness probes: {ready} of {len(results['probes'])} ready.",
    ]
    if results["error_messages"]:
        lines += ["", "Most frequent errors (numbers masked):", ""]
        lines += [f"- {count} x `{message}`" for message, count in results["error_messages"]]
    not_ready = [p for p in results["probes"] if not p["ready"]]
    if not_ready:
        lines += ["", "Probes not ready:", ""]
        lines += [f"- t={p['t']:.0f} s: {'; '.join(p['reasons'])}" for p in not_ready]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warmup = results["settings"]["warmup_s"]
    fig, (absolute, change) = plt.subplots(1, 2, figsize=(14, 5.5))
    for name, p in results["processes"].items():
        if name == TOTAL_NAME:
            continue
        t = np.array([point[0] for point in p["samples"]])
        rss_mb = np.array([point[1] for point in p["samples"]]) / MB
        style = "k-" if name == SERVER_NAME else "-"
        absolute.plot(t, rss_mb, style, marker=".", label=name)
        if "start_mb" in p:
            after = t >= warmup
            change.plot(t[after], rss_mb[after] - p["start_mb"], style, marker=".", label=name)
    for ax in (absolute, change):
        ax.axvspan(0, warmup, color="grey", alpha=0.15, lw=0, label="warm-up (not fitted)")
        ax.set_xlabel("seconds since load start")
        ax.set_xlim(0, results["samples"][-1]["t"] * 1.02)
    absolute.set_ylabel("RSS (MB)")
    absolute.set_title("resident memory per process")
    change.axhline(0, color="grey", lw=0.8)
    change.set_ylabel("RSS - RSS at the first sample after the warm-up (MB)")
    change.set_title("growth after the warm-up")
    change.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    s = results["settings"]
    fig.suptitle(f"soak: {PIPELINE}, {s['concurrency']} clients, {s['duration_s']:g} s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    args = parse_args()
    started, run_dir, loadavg_start = start_run(args.out)
    _, _, images, _ = heldout_split(*load_digits_uint8())
    with open(run_dir / "tritonserver.log", "w") as server_log:
        server = LocalServer(model_repository=MODEL_REPOSITORY, ports=Ports.free(), log=server_log)
        log(f"starting tritonserver (log: {run_dir / 'tritonserver.log'})")
        with server:
            log(f"soak: {args.concurrency} clients for {args.duration_s:g} s, warm-up {args.warmup_s:g} s")
            soak = run_soak(server, args, images)
    results = {
        "started": started,
        "commit": source_revision(REPO_ROOT),
        "machine": {"cpus": os.cpu_count(), "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg()[0]},
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "sample_period_s": SAMPLE_PERIOD_S,
            "probe_timeout_s": PROBE_TIMEOUT_S,
            "client_timeout_s": CLIENT_TIMEOUT_S,
        },
        "processes": per_process(soak["samples"], args.warmup_s),
        **soak,
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report = render_report(results)
    (run_dir / "report.md").write_text(report)
    plot(results, run_dir / "rss.png")
    print(report)
    log(f"written: {run_dir / 'report.md'}, {run_dir / 'rss.png'}, {run_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
