"""Run perf_analyzer (2.51.0, from the tritonclient wheel) and read its CSV.

The wheel's perf_analyzer links libcudart.so.12 even for CPU-only runs; the
pip package nvidia-cuda-runtime-cu12 ships it, but outside any default
library path. `perf_analyzer_env` adds that directory so that neither the
benchmark nor a person (scripts/perf_analyzer.sh) has to find it by hand.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import importlib.util
import io
import os
import subprocess
import time
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from triton_guard.errors import PerfAnalyzerError

CUDA_RUNTIME_PACKAGE = "nvidia.cuda_runtime"

# CSV columns perf_analyzer 2.51.0 writes with -f (--verbose-csv only appends more).
_THROUGHPUT = "Inferences/Second"
_PERCENTILES = {"p50": "p50 latency", "p90": "p90 latency", "p95": "p95 latency", "p99": "p99 latency"}
_SERVER_QUEUE = "Server Queue"
_SERVER_COMPUTE = ("Server Compute Input", "Server Compute Infer", "Server Compute Output")

# perf_analyzer 2.51.0 prints this, writes no CSV and exits 2 when the last
# --max-trials windows never agreed within the stability percentage.
UNSTABLE_MARKER = "Failed to obtain stable measurement"
_SUMMARY_LINES = 8  # unindented output lines kept in an error (its indented lines are statistics)

# Benchmarks (scripts/bench_guard.py, scripts/load_runs.py) share these.
UNSTABLE_RETRIES = 1  # an unstable measurement is taken again with a window this many times doubled
WARMUP_REQUESTS = 500  # per model at the top concurrency, discarded (no stability wait)


@dataclasses.dataclass(frozen=True)
class PerfResult:
    """One measured concurrency: client-side latencies and server-side averages, in µs."""

    concurrency: int
    throughput: float  # inferences per second
    p50_us: int
    p90_us: int
    p95_us: int
    p99_us: int
    # For an ensemble the queue is the ensemble's own (a few µs), not its
    # steps' queues, while compute covers the steps: compare like with like.
    server_queue_us: int | None = None
    server_compute_us: int | None = None  # input + infer + output

    def to_dict(self) -> dict[str, float | int | None]:
        return dataclasses.asdict(self)


def perf_analyzer_path() -> Path:
    """The perf_analyzer the tritonclient wheel installed next to this interpreter."""
    return Path(sys.executable).parent / "perf_analyzer"


def cuda_runtime_lib_dir() -> Path | None:
    """lib/ of nvidia-cuda-runtime-cu12, found without importing anything heavy."""
    try:
        spec = importlib.util.find_spec(CUDA_RUNTIME_PACKAGE)
    except ModuleNotFoundError:  # no `nvidia` namespace package at all
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    # A namespace package can be missed (e.g. an unusual sys.path): look where pip puts it.
    roots.append(os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cuda_runtime"))
    for root in roots:
        for lib in glob.glob(os.path.join(root, "lib", "libcudart.so*")):
            return Path(lib).parent
    return None


def perf_analyzer_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: os.environ) with the CUDA runtime's lib dir first on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)
    lib_dir = cuda_runtime_lib_dir()
    if lib_dir is not None:
        dirs = [str(lib_dir)] + [d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
        env["LD_LIBRARY_PATH"] = ":".join(dirs)
    return env


def parse_perf_csv(text: str) -> list[PerfResult]:
    """One PerfResult per row of a perf_analyzer -f CSV (one row per concurrency)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise PerfAnalyzerError("perf_analyzer CSV holds no measurement row")
    results = []
    for row in rows:
        compute = [row[c] for c in _SERVER_COMPUTE if row.get(c) not in (None, "")]
        results.append(
            PerfResult(
                concurrency=int(row["Concurrency"]),
                throughput=float(row[_THROUGHPUT]),
                **{f"{name}_us": int(row[column]) for name, column in _PERCENTILES.items()},
                server_queue_us=int(row[_SERVER_QUEUE]) if row.get(_SERVER_QUEUE) else None,
                server_compute_us=sum(int(v) for v in compute) if compute else None,
            )
        )
    return results


def run_perf_analyzer(
    model: str,
    url: str,
    concurrency: int,
    input_data: str | os.PathLike[str],
    measurement_ms: int,
    extra_args: Sequence[str] = (),
) -> PerfResult:
    """Measure `model` over gRPC at one concurrency; raise PerfAnalyzerError on failure."""
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as tmp:
        csv_path = Path(tmp) / "result.csv"
        cmd = [
            str(perf_analyzer_path()),
            "-i", "grpc",
            "-u", url,
            "-m", model,
            "--concurrency-range", str(concurrency),
            "--input-data", str(input_data),
            "--measurement-interval", str(measurement_ms),
            "-f", str(csv_path),
            *extra_args,
        ]  # fmt: skip
        proc = subprocess.run(cmd, env=perf_analyzer_env(), capture_output=True, text=True)
        if proc.returncode != 0 or not csv_path.exists():
            output = proc.stdout + proc.stderr
            summary = [line for line in output.splitlines() if line.strip() and not line[0].isspace()]
            raise PerfAnalyzerError(
                f"perf_analyzer on {model} at concurrency {concurrency} exited with "
                f"{proc.returncode}: " + " | ".join(summary[-_SUMMARY_LINES:]),
                unstable=UNSTABLE_MARKER in output,
            )
        return parse_perf_csv(csv_path.read_text())[0]


def measure(
    model: str,
    url: str,
    concurrency: int,
    input_data: str | os.PathLike[str],
    measurement_ms: int,
    unstable_retries: int = UNSTABLE_RETRIES,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One benchmark cell, never raising: the PerfResult as a dict with the window that gave it.

    An unstable measurement (perf_analyzer's windows never agreed, common on a
    shared machine) is taken again with the window doubled, up to
    `unstable_retries` times; any other failure, or the last unstable one,
    gives {"error": message, "unstable": bool, "measurement_ms": window}.
    """
    window_ms, retries = measurement_ms, unstable_retries
    while True:
        try:
            result = run_perf_analyzer(model, url, concurrency, input_data, window_ms)
            return {**result.to_dict(), "measurement_ms": window_ms}
        except PerfAnalyzerError as exc:
            if not exc.unstable or retries == 0:
                return {"error": str(exc), "unstable": exc.unstable, "measurement_ms": window_ms}
        retries -= 1
        window_ms *= 2
        if log is not None:
            log(f"  unstable; again with a {window_ms} ms window")


def warm_up(
    model: str,
    url: str,
    concurrency: int,
    input_data: str | os.PathLike[str],
    measurement_ms: int,
    requests: int = WARMUP_REQUESTS,
) -> str | None:
    """Load `model` with `requests` requests at `concurrency`; the numbers are discarded.

    Returns None, or perf_analyzer's error: only the load matters here.
    """
    try:
        run_perf_analyzer(model, url, concurrency, input_data, measurement_ms, ["--request-count", str(requests)])
    except PerfAnalyzerError as exc:
        return str(exc)
    return None


def source_revision(repo_root) -> str:
    """`git describe --always --dirty` of the checkout a benchmark ran from, for its report."""
    proc = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=repo_root, capture_output=True, text=True
    )
    return proc.stdout.strip() or "unknown"


def start_run(out_dir: Path) -> tuple[str, Path, float]:
    """(time stamp, a new folder out_dir/<stamp> for the run's report, load average now)."""
    started = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out_dir) / started
    run_dir.mkdir(parents=True)
    return started, run_dir, os.getloadavg()[0]
