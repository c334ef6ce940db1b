"""Micro-benchmark: the guard's own work per execute, breaker CLOSED, CPU time per call.

    .venv/bin/python scripts/bench_guard_path.py [--calls 5000] [--rounds 5] [--requests 8]
        [--against REV]

One execute of `--requests` stamped requests through `Guard.call_requests`,
the upstream a function that returns at once, side by side with:

  bare call          the upstream function called directly: what an unguarded execute pays
  guard, memory      the whole guard, breaker in a MemoryStore (one process)
  guard, shared      the whole guard, breaker in the SharedFileStore every guard process of a server shares
  breaker, shared    acquire + record of that store only (one permit for the batch)
  hand-off           the trip to the bulkhead worker that enforces the deadline, nothing else

The guard's work per execute is "guard, shared" minus "bare call". CPU time is
time.process_time (every thread of the process, kernel time included), per
call; each round runs every row in a rotated order, the table shows the median
over the rounds and the spread. `--against REV` measures the code of another
git revision (its src/, from `git archive`) in the same run, alternating with
this checkout round by round, and prints both. Load average is printed: the
figures are only as quiet as the machine.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS = ("bare call", "guard, memory", "guard, shared", "breaker, shared", "hand-off")


# --- inside one measuring process (src chosen by PYTHONPATH) ------------------------------------


def _per_call(fn, calls: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per call of fn(), after a warm-up."""
    for _ in range(min(500, calls)):
        fn()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.process_time() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6


def _measure(order: list[str], calls: int, requests: int) -> dict[str, tuple[float, float]]:
    from triton_guard.guard.breaker import CircuitBreaker
    from triton_guard.guard.config import GuardConfig
    from triton_guard.guard.core import Guard
    from triton_guard.guard.shared_state import SharedFileStore

    try:
        from triton_guard.guard.store import MemoryStore
    except ImportError:  # a revision before issue 20
        from triton_guard.guard.shared_state import MemoryStore

    config = GuardConfig()
    answer = ["answer"] * requests

    def upstream(indices, timeout_s):
        return answer

    def error_of(value):
        return None

    arrivals = [time.monotonic()] * requests  # stamped now: every deadline is timeout_ms (10 s) away
    everything = tuple(range(requests))
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    results = {}
    with tempfile.TemporaryDirectory(prefix="triton-guard-bench-", dir=base) as state_dir:
        stores = {"memory": MemoryStore(), "shared": SharedFileStore(state_dir)}
        guards = {kind: _guard(Guard, config, CircuitBreaker("bench", config, store)) for kind, store in stores.items()}
        breaker = CircuitBreaker("bench-breaker", config, stores["shared"])

        def breaker_pair():
            breaker.record(breaker.acquire(), success=True, duration_s=0.0001, requests=requests)

        hand_off = _hand_off(guards["memory"], upstream, everything)
        work = {
            "bare call": lambda: upstream(everything, 10.0),
            "guard, memory": lambda: guards["memory"].call_requests(arrivals, upstream, error_of),
            "guard, shared": lambda: guards["shared"].call_requests(arrivals, upstream, error_of),
            "breaker, shared": breaker_pair,
            "hand-off": hand_off,
        }
        for row in order:
            results[row] = _per_call(work[row], calls)
        for guard in guards.values():
            guard.close()
    return results


def _guard(guard_class, config, breaker):
    """A Guard of the revision measured: it takes a GuardPolicy, or (before) the policy's arguments."""
    if "policy" in inspect.signature(guard_class).parameters:
        from triton_guard.guard.policy import GuardPolicy

        return guard_class(GuardPolicy("bench", config, breaker))
    return guard_class("bench", config, breaker, None)


def _hand_off(guard, upstream, everything):
    """One trip to a bulkhead worker and back, by whatever the revision measured uses."""
    workers = getattr(guard, "workers", None)
    if workers is not None and hasattr(workers, "take"):  # this project's DeadlineWorkers

        def trip():
            worker = workers.take()
            return workers.run(worker, lambda: upstream(everything, 10.0), 10.0)

        return trip
    pool = guard._workers  # a concurrent.futures executor (before issue 20)
    return lambda: pool.submit(upstream, everything, 10.0).result(timeout=10.0)


# --- the parent: options, rounds, rotation, the table ----------------------------------------------------------


def measure_rounds(script: str, rows, against: str | None, rounds: int, spec: dict) -> tuple[list[str], dict]:
    """Run `script --child` once per round per revision (this checkout, and `against`), rows rotated.

    Returns (labels, {(label, row): [one value per round]}); the revisions
    alternate round by round so that noise lands on both alike.
    """
    with tempfile.TemporaryDirectory(prefix="bench-src-") as tmp:
        sources = {_revision(): REPO_ROOT / "src"}
        if against:
            sources[_revision(against)] = _export(against, Path(tmp))
        labels = list(sources)
        samples = {(label, row): [] for label in labels for row in rows}
        for r in range(rounds):
            for label in labels[r % len(labels):] + labels[: r % len(labels)]:
                order = list(rows[r % len(rows):] + rows[: r % len(rows)])
                print(f"round {r + 1}/{rounds}: {label}", file=sys.stderr, flush=True)
                child = json.dumps({**spec, "order": order})
                out = subprocess.run([sys.executable, script, "--child", child], capture_output=True, text=True,
                                     env={**os.environ, "PYTHONPATH": str(sources[label])})  # fmt: skip
                if out.returncode != 0:
                    raise SystemExit(f"measuring with {sources[label]} failed:\n{out.stderr}")
                for row, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
                    samples[label, row].append(value)
    return labels, samples


def _export(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def _revision(rev: str = "HEAD") -> str:
    out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", rev], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "src"], capture_output=True, text=True)
    return out.stdout.strip() + ("+changes" if rev == "HEAD" and dirty.stdout.strip() else "")


def bench_arguments(doc: str, calls: int, calls_help: str, against_help: str) -> argparse.Namespace:
    """The options of a script measured by measure_rounds: --calls, --rounds, --requests, --against, and its --child."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--calls", type=int, default=calls, help=calls_help)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=8, help="requests per execute")
    parser.add_argument("--against", metavar="REV", help=against_help)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child and min(args.calls, args.rounds, args.requests) <= 0:
        parser.error("--calls, --rounds and --requests must be positive")
    return args


def load_line(start: tuple[float, float, float], end: tuple[float, float, float]) -> str:
    """The load average at the start and the end of a run, and the CPUs: how quiet the figures are."""
    return (f"load average {start[0]:.2f} {start[1]:.2f} {start[2]:.2f} at start, "
            f"{end[0]:.2f} {end[1]:.2f} {end[2]:.2f} at end; {os.cpu_count()} CPUs\n")


def main() -> int:
    args = bench_arguments(__doc__, 5000, "calls per row per round", "also measure this git revision's src/, alternating")
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(_measure(spec["order"], spec["calls"], spec["requests"])))
        return 0

    load_start = os.getloadavg()
    spec = {"calls": args.calls, "requests": args.requests}
    labels, samples = measure_rounds(__file__, ROWS, args.against, args.rounds, spec)
    load_end = os.getloadavg()

    print(f"Guard work per execute of {args.requests} requests, breaker CLOSED; {args.calls} calls x "
          f"{args.rounds} rounds, rotated; median (min-max) per call.")
    print(load_line(load_start, load_end))
    header = f"{'':18s}" + "".join(f"{label + ' CPU us':>26s}{'wall us':>10s}" for label in labels)
    print(header)
    medians = {}
    for row in ROWS:
        line = f"{row:18s}"
        for label in labels:
            cpu = [c for c, _ in samples[label, row]]
            wall = [w for _, w in samples[label, row]]
            medians[label, row] = statistics.median(cpu)
            line += f"{statistics.median(cpu):>12.2f} ({min(cpu):5.1f}-{max(cpu):5.1f}){statistics.median(wall):>10.2f}"
        print(line)
    print()
    for label in labels:
        for store in ("memory", "shared"):
            work = medians[label, f"guard, {store}"] - medians[label, "bare call"]
            print(f"{label}: the guard's work per execute, {store} store: {work:.2f} us CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
