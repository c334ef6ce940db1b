"""Overload, and a hang under overload, second by second, against a real server.

    .venv/bin/python scripts/overload.py [--checkout DIR] [--scenario both|overload|hang]
        [--clients 256] [--processes 2] [--duration-s 40] [--hang-at-s 20]
        [--probe-period-s 2] [--probe-timeout-s 4] [--out out/overload]

Each scenario starts its own `triton-guard serve` (the hang scenario with
--chaos) from the checkout DIR (default: this one; PYTHONPATH=DIR/src, DIR's
model_repository, free ports), so the same command measures any commit:

    git worktree add /tmp/base 99226d9
    .venv/bin/python scripts/overload.py --checkout /tmp/base     # before
    .venv/bin/python scripts/overload.py                          # after

From t = 0, CLIENTS closed-loop gRPC clients call `pipeline` with held-out
digits (triton_guard_demo.loadgen: PROCESSES processes of asyncio clients,
no think time, no backoff). Beside them, every PROBE_PERIOD_S, the
Deployment's own readiness command runs as a new process:
`triton-guard probe --url ... --timeout PROBE_TIMEOUT_S` (DIR's CLI); a
watcher reads the classifier's breaker state and the canary's gauges from
/metrics every 0.5 s; halfway through, `triton-guard status` is captured.
The hang scenario sends `triton-guard chaos hang --model classifier` at
HANG_AT_S (probes run half a period out of phase with it).

Prints, per scenario, one row per second: answers,
rejections by reason (from the messages: triton_guard_demo.loadgen.REASONS),
p99 of the answers, the probes started in that second with their verdict,
the breaker state and the canary's overload gauge; then a summary (goodput,
probes ready, first not-ready probe and breaker OPEN after the hang, CPU
taken by the clients, the server and the probes, load average). Everything
also goes to OUT/<timestamp>/ (results.json, report.md, each server's log).
About 2.5 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing

from triton_guard import promtext  # noqa: E402
from triton_guard_demo.loadgen import process_group_cpu_s, LoadRun, LoadSpec, heldout_images  # noqa: E402

CLI = Path(sys.executable).parent / "triton-guard"
OUT_DIR = REPO_ROOT / "out" / "overload"
HUNG_MODEL = "classifier"  # the chaos target, and the breaker the table shows
READY_TIMEOUT_S = 180.0
WARMUP_REQUESTS = 50
WATCH_PERIOD_S = 0.5
BREAKER_STATES = {0: "CLOSED", 1: "OPEN", 2: "HALF_OPEN"}
REASON_CHARS = 90  # a not-ready probe's reason in the table (results.json has it whole)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=REPO_ROOT, help="whose serve, probe and chaos run (default: this checkout)")
    parser.add_argument("--model-repository", type=Path, help="default: CHECKOUT/model_repository")
    parser.add_argument("--scenario", choices=("both", "overload", "hang"), default="both")
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--duration-s", type=float, default=40.0)
    parser.add_argument("--hang-at-s", type=float, default=20.0)
    parser.add_argument("--probe-period-s", type=float, default=2.0)
    parser.add_argument("--probe-timeout-s", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    args.checkout = args.checkout.resolve()
    args.model_repository = (args.model_repository or args.checkout / "model_repository").resolve()
    if not (args.checkout / "src" / "triton_guard").is_dir():
        parser.error(f"{args.checkout} is not a triton-guard checkout (no src/triton_guard)")
    if not 0 < args.hang_at_s < args.duration_s:
        parser.error("need 0 < --hang-at-s < --duration-s")
    return args


def cli_env(checkout: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(checkout / "src")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serving:
    """`triton-guard serve` from a checkout on free ports, until stop()."""

    def __init__(self, args, chaos: bool, log: Path) -> None:
        self.ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        command = [str(CLI), "serve", "--model-repository", str(args.model_repository),
                   "--http-port", str(self.ports["http"]), "--grpc-port", str(self.ports["grpc"]),
                   "--metrics-port", str(self.ports["metrics"])] + (["--chaos"] if chaos else [])
        self._log = open(log, "w")
        self.process = subprocess.Popen(command, env=cli_env(args.checkout), stdout=self._log, stderr=subprocess.STDOUT)
        self.grpc_url = f"localhost:{self.ports['grpc']}"
        self.metrics_url = f"http://localhost:{self.ports['metrics']}/metrics"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve did not become ready (see {log})")
            time.sleep(0.5)
        self.server_pgid = self._tritonserver_pid()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://localhost:{self.ports['http']}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def _tritonserver_pid(self) -> int | None:
        needle = f"--grpc-port={self.ports['grpc']}".encode()
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and needle in (entry / "cmdline").read_bytes() and b"tritonserver" in (entry / "cmdline").read_bytes():
                    return int(entry.name)  # its own session: the stubs share its process group
            except OSError:
                continue
        return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


class Recorder:
    """Probes and /metrics readings, in seconds since t0."""

    def __init__(self, t0: float) -> None:
        self.t0, self.stop = t0, threading.Event()
        self.probes: list[dict] = []
        self.readings: list[dict] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def probe_loop(self, command: list[str], env: dict, period_s: float, phase_s: float) -> None:
        next_at = phase_s
        while not self.stop.wait(max(0.0, next_at - self.now())):
            start = self.now()
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            end = self.now()
            text = (done.stdout.strip() or done.stderr.strip()).splitlines()
            self.probes.append({"start": start, "end": end, "rc": done.returncode, "line": text[0] if text else ""})
            while next_at <= end:
                next_at += period_s

    def metrics_loop(self, url: str) -> None:
        while not self.stop.wait(WATCH_PERIOD_S):
            try:
                samples = promtext.fetch(url, 2.0)
            except Exception as exc:  # noqa: BLE001  (a reading that failed is a reading)
                self.readings.append({"t": self.now(), "error": str(exc)})
                continue
            state = promtext.by_label(samples, "triton_guard_breaker_state", "model").get(HUNG_MODEL)
            gauges = promtext.sum_by_name(samples)
            self.readings.append({
                "t": self.now(),
                "breaker": BREAKER_STATES.get(int(state), str(state)) if state is not None else None,
                "overloaded": gauges.get("triton_guard_canary_overloaded"),
                "canary_ready": gauges.get("triton_guard_canary_ready"),
            })


def run_scenario(args, name: str, run_dir: Path, images, labels) -> dict:
    hang = name == "hang"
    print(f"\n## {name}: {args.clients} clients for {args.duration_s:g} s"
          + (f", `chaos hang` at {args.hang_at_s:g} s" if hang else "") + f" (checkout {args.checkout})", flush=True)
    server = Serving(args, chaos=hang, log=run_dir / f"tritonserver-{name}.log")
    env, cli = cli_env(args.checkout), [str(CLI)]
    try:
        warm = LoadRun(LoadSpec(server.grpc_url, clients=1, processes=1), images, labels, duration_s=2.0)
        warm.start()
        warm.collect()
        load = LoadRun(LoadSpec(server.grpc_url, clients=args.clients, processes=args.processes), images, labels,
                       args.duration_s)
        load_avg_start = os.getloadavg()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_before = process_group_cpu_s(server.server_pgid) if server.server_pgid else None
        t0 = load.start()
        rec = Recorder(t0)
        phase = (args.hang_at_s + args.probe_period_s / 2) % args.probe_period_s
        probe = cli + ["probe", "--url", server.grpc_url, "--timeout", f"{args.probe_timeout_s:g}"]
        threads = [threading.Thread(target=rec.probe_loop, args=(probe, env, args.probe_period_s, phase), daemon=True),
                   threading.Thread(target=rec.metrics_loop, args=(server.metrics_url,), daemon=True)]
        for thread in threads:
            thread.start()
        events = {}
        middle = args.hang_at_s - args.probe_period_s if hang else args.duration_s / 2
        time.sleep(max(0.0, middle - rec.now()))
        status = subprocess.run(cli + ["status", "--url", server.grpc_url, "--metrics-url", server.metrics_url],
                                env=env, capture_output=True, text=True)
        events["status_at"] = rec.now()
        if hang:
            time.sleep(max(0.0, args.hang_at_s - rec.now()))
            events["hang_sent"] = rec.now()
            chaos = subprocess.run(cli + ["chaos", "hang", "--model", HUNG_MODEL, "--url", server.grpc_url],
                                   env=env, capture_output=True, text=True)
            events["hang_acknowledged"], events["hang_rc"] = rec.now(), chaos.returncode
        result = load.collect()
        rec.stop.set()
        for thread in threads:
            thread.join(args.probe_timeout_s + 10)
        cpu_after = process_group_cpu_s(server.server_pgid) if server.server_pgid else None
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        load_avg_end = os.getloadavg()
        if hang:
            subprocess.run(cli + ["chaos", "clear", "--model", HUNG_MODEL, "--url", server.grpc_url],
                           env=env, capture_output=True, text=True)
    finally:
        server.stop()
    probe_cpu = (children_after.ru_utime + children_after.ru_stime - children_before.ru_utime - children_before.ru_stime)
    cpu = {
        "client_cores": result.client_cpu_s / result.wall_s,
        "server_cores": None if cpu_before is None else (cpu_after - cpu_before) / result.wall_s,
        "probe_cores": probe_cpu / result.wall_s,
        "load_average_start": load_avg_start, "load_average_end": load_avg_end, "cpus": os.cpu_count(),
    }
    report = render(args, name, result, rec, events, status.stdout, cpu)
    print(report, flush=True)
    (run_dir / f"report-{name}.md").write_text(report + "\n")
    return {"scenario": name, "events": events, "cpu": cpu, "probes": rec.probes, "readings": rec.readings,
            "status": status.stdout, "seconds": [row_dict(r) for r in result.rows()]}


def row_dict(row) -> dict:
    return {"second": row.second, "answers": row.answers, "wrong": row.wrong, "errors": dict(row.errors),
            "p99_ms": row.p99_ms(), "examples": row.examples}


def short(line: str) -> str:
    """A probe's first line without what every such line repeats."""
    for noise in ("not ready: ", "[request id: <id_unknown>] ", "in ensemble 'pipeline', "):
        line = line.replace(noise, "")
    return line[:REASON_CHARS]


def render(args, name: str, result, rec: Recorder, events: dict, status: str, cpu: dict) -> str:
    lines = ["| s | answers | rejected, by reason | p99 ms | probes started | breaker | overloaded |",
             "|---:|---:|---|---:|---|---|---|"]
    last = int(args.duration_s)
    for row in result.rows()[: last + 1]:
        s = row.second
        rejected = ", ".join(f"{r} {n}" for r, n in sorted(row.errors.items())) or "0"
        probes = "; ".join(
            ("ready" if p["rc"] == 0 else f"**NOT READY** ({short(p['line'])})") + f" {p['end'] - p['start']:.1f}s"
            for p in rec.probes if int(p["start"]) == s)
        readings = [r for r in rec.readings if int(r["t"]) == s and "error" not in r]
        breaker = "/".join(dict.fromkeys(r["breaker"] or "-" for r in readings)) or ""
        overloaded = "/".join(dict.fromkeys("-" if r["overloaded"] is None else f"{r['overloaded']:g}" for r in readings))
        p99 = row.p99_ms()
        lines.append(f"| {s} | {row.answers} | {rejected} | {'' if p99 is None else f'{p99:.0f}'} "
                     f"| {probes} | {breaker} | {overloaded} |")
    steady = result.totals(first=2, last=last - 1)
    n = max(1, last - 2)
    ready = sum(p["rc"] == 0 for p in rec.probes)
    summary = [
        "", f"- answers {steady.answers / n:,.0f}/s, rejected {sum(steady.errors.values()) / n:,.0f}/s "
        f"({', '.join(f'{r} {c / n:,.0f}/s' for r, c in sorted(steady.errors.items())) or 'none'}), "
        f"p99 of answers {steady.p99_ms() or 0:.0f} ms, accuracy {1 - steady.wrong / max(steady.answers, 1):.3f} "
        f"(seconds 2-{last - 1})",
        f"- probes: {ready} of {len(rec.probes)} ready",
    ]
    if "hang_acknowledged" in events:
        # The server applies the hang somewhere between the command's start and its reply (the
        # CLI's own start-up takes a second or two): probes are counted from the command's start.
        sent, acked = events["hang_sent"], events["hang_acknowledged"]
        before = [p for p in rec.probes if p["end"] < sent]
        after = [p for p in rec.probes if p["start"] >= sent]
        opened = [r["t"] for r in rec.readings if r.get("breaker") == "OPEN" and r["t"] >= sent]
        first = "; ".join(f"started {p['start'] - sent:.2f} s after it: {'ready' if p['rc'] == 0 else 'NOT READY'}"
                          for p in after[:2])
        summary += [
            f"- before the hang: {sum(p['rc'] == 0 for p in before)} of {len(before)} probes ready",
            f"- `chaos hang` sent at {sent:.2f} s, acknowledged at {acked:.2f} s; the first probes after it: "
            + (first or "none") + f" (probe period {args.probe_period_s:g} s); "
            f"{sum(p['rc'] != 0 for p in after)} of {len(after)} probes after it not ready",
            "- breaker OPEN " + (f"{opened[0] - sent:.1f} s after the hang was sent" if opened else "not seen"),
        ]
    overloaded = [r for r in rec.readings if r.get("overloaded")]
    summary.append(f"- triton_guard_canary_overloaded was 1 in {len(overloaded)} of {len(rec.readings)} readings"
                   if any(r.get("overloaded") is not None for r in rec.readings)
                   else "- no triton_guard_canary_overloaded series on /metrics")
    summary.append(f"- `triton-guard status` at {events['status_at']:.0f} s: "
                   + " | ".join(l.strip() for l in status.splitlines() if l.strip() and ("READY" in l or "overload" in l)))
    summary.append(
        f"- CPU (cores, of {cpu['cpus']}): clients {cpu['client_cores']:.2f}, server "
        + ("?" if cpu["server_cores"] is None else f"{cpu['server_cores']:.2f}")
        + f", probe processes {cpu['probe_cores']:.2f}; load average {cpu['load_average_start'][0]:.2f} at the start, "
        f"{cpu['load_average_end'][0]:.2f} at the end")
    return "\n".join(lines + summary)


def main() -> int:
    args = parse_args()
    run_dir = args.out / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    images, labels = heldout_images()
    scenarios = ("overload", "hang") if args.scenario == "both" else (args.scenario,)
    print(f"# scripts/overload.py --checkout {args.checkout} ({' '.join(sys.argv[1:])}); load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    results = [run_scenario(args, name, run_dir, images, labels) for name in scenarios]
    (run_dir / "results.json").write_text(json.dumps({"argv": sys.argv, "checkout": str(args.checkout),
                                                      "runs": results}, indent=1, default=str))
    print(f"\nwritten to {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
