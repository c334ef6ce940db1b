"""How fast is the readiness probe, and what does the canary cost the server?

One LocalServer on the project's repository, then:

1. canary call (no Python start-up): `ModelHealthValidator.check()` in this
   process, N times in a row -> p50 / p99 (target: p50 <= 50 ms on a CPU box);
2. the probe as Kubernetes runs it: `triton-guard probe` as a new process,
   M times -> p50 / p99 (start-up included);
3. the load the canary adds: CPU seconds the canary's stub and the whole
   server spend per canary call (from /proc/<pid>/stat), and the same over a
   quiet period with only the canary's own background run (every interval_ms).

    .venv/bin/python scripts/bench_probe.py [--calls 200] [--cli-calls 30] [--out out/bench-probe]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from triton_guard.canary.probe import ModelHealthValidator  # noqa: E402
from triton_guard.server import LocalServer, Ports  # noqa: E402

CLI = Path(sys.executable).parent / "triton-guard"
QUIET_S = 30.0  # background-only period for the idle cost
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--cli-calls", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench-probe")
    args = parser.parse_args()
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)

    with open(out / "tritonserver.log", "w") as log, LocalServer(ROOT / "model_repository", Ports.free(), log=log) as server:
        validator = ModelHealthValidator(server.grpc_url, timeout_s=5.0)
        for _ in range(5):  # warm-up: first golden inference, gRPC channel
            validator.check()
        procs = {"tritonserver": server.process.pid, **server.stub_pids()}

        # 3b first, while nothing else runs: the canary's own background cost.
        before = {name: cpu_seconds(pid) for name, pid in procs.items()}
        time.sleep(QUIET_S)
        idle = {name: cpu_seconds(pid) - before[name] for name, pid in procs.items()}

        before = {name: cpu_seconds(pid) for name, pid in procs.items()}
        in_process, not_ready = [], 0
        for _ in range(args.calls):
            result = validator.check()
            in_process.append(result.latency_s)
            not_ready += not result.ready
        per_call = {name: (cpu_seconds(pid) - before[name]) / args.calls for name, pid in procs.items()}

        cli = []
        for _ in range(args.cli_calls):
            started = time.monotonic()
            done = subprocess.run([str(CLI), "probe", "--url", server.grpc_url], capture_output=True)
            cli.append(time.monotonic() - started)
            not_ready += done.returncode != 0

    results = {
        "canary_call": percentiles(in_process),
        "probe_command": percentiles(cli),
        "not_ready_answers": not_ready,
        "cpu_ms_per_canary_call": {k: v * 1000 for k, v in per_call.items() if v > 0},
        "cpu_ms_per_canary_call_total": sum(per_call.values()) * 1000,
        "idle_cpu_percent_canary": idle[next(n for n in idle if n.startswith("canary"))] / QUIET_S * 100,
        "idle_cpu_percent_server_total": sum(idle.values()) / QUIET_S * 100,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [
        "| measurement | p50 (ms) | p99 (ms) | n |",
        "|---|---:|---:|---:|",
        f"| canary call (in-process client, no start-up) | {results['canary_call']['p50_ms']:.1f} | "
        f"{results['canary_call']['p99_ms']:.1f} | {results['canary_call']['n']} |",
        f"| `triton-guard probe` (new process, start-up included) | {results['probe_command']['p50_ms']:.0f} | "
        f"{results['probe_command']['p99_ms']:.0f} | {results['probe_command']['n']} |",
        "",
        f"Not-ready answers on a healthy server: {not_ready}",
        "",
        "| load the canary adds | value |",
        "|---|---:|",
        f"| CPU per canary call, whole server (all processes) | {results['cpu_ms_per_canary_call_total']:.1f} ms |",
    ]
    lines += [f"| ... of which {k} | {v:.1f} ms |" for k, v in sorted(results["cpu_ms_per_canary_call"].items())]
    lines += [
        f"| idle: canary stub (background run every interval_ms) | {results['idle_cpu_percent_canary']:.2f} % of a core |",
        f"| idle: whole server | {results['idle_cpu_percent_server_total']:.2f} % of a core |",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {out}")
    return 0 if not_ready == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
