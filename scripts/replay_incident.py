"""Incident replay: a hung upstream under load, second by second.

    .venv/bin/python scripts/replay_incident.py [--duration-s 70] [--concurrency 32]
        [--fault-at-s 10] [--clear-at-s 30] [--timeout-ms 10000] [--failure-threshold 5]
        [--recovery-ms 30000] [--probe-period-s 2] [--out out/replay]

One `serve --chaos` tritonserver (LocalServer chaos=True, free ports) on a copy
of the project's model_repository whose guards of the classifier (`classifier`
itself, guarded in-process, which `pipeline` calls; and the BLS guards) get the given
timeout_ms, failure_threshold and recovery_ms (triton_guard_demo.repository's
fast_model_repository; everything else as in production). The defaults are
the shipped ones (triton_guard.defaults: 10 s, 5 failures, 30 s; active
recovery on), so the replay shows what production does: normal load, hang,
breaker OPEN, recovery probes, clear and recovery.

From t = 0, CONCURRENCY client threads (one gRPC client each) call `pipeline`
in a loop, one held-out digit (IMAGE UINT8 [1, 8, 8]) per request, with a
client timeout of 30 s, far above the guard's, so that the client never hides
a hang. At --fault-at-s the `chaos` model is told to hang `classifier`; at
--clear-at-s it is told to clear. Fault times are taken when the command is
sent (the reply is also recorded). Every request is recorded: start, end and
its outcome class, from the gRPC status and message:

  ok             an answer
  rejected fast  UNAVAILABLE saying "Service temporarily unavailable" (breaker),
                 "overloaded" (bulkhead) or "Request timeout expired" (a queue)
  timed out      "did not answer within" (the guard's hard deadline), or
                 "deadline timeout_ms=N passed" (it expired before the guard)
  other error    anything else

Beside the load, a probe thread runs the readiness probe
(ModelHealthValidator(url, timeout_s=4).check(), as the Deployment's
`triton-guard probe --timeout 4`) every --probe-period-s (2 s here; the
Deployment's readinessProbe has periodSeconds 10), half a period out of phase
with the fault so that no probe starts together with it; a state thread reads
the `classifier` breaker's state from the server's shared state file every
100 ms.

Targets (reported, not asserted), with T = timeout, P = probe period:
  (a) no request takes longer than T + 1 s;
  (b) the first fast rejection ends within T + 1 s of the fault: the first
      wave of timed-out requests opens the breaker, whatever the batching
      (b': the first breaker rejection alone, shown beside it);
  (c) the first not-ready probe starts within P of the fault;
  (d) full throughput (>= 90 % of the mean ok/s over seconds 2 .. the last
      whole second before the fault: seconds 2-9 with the defaults) is back
      within 10 s of the clear, measured to the end of the first such second
      (active recovery; recovery_ms alone would take R).

Writes timeline.md (targets, then a per-second table), timeline.png,
results.json and tritonserver.log to OUT/<timestamp>/ and prints the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))  # run from a checkout without installing

import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from triton_guard_demo.repository import fast_model_repository  # noqa: E402
from triton_guard import defaults  # noqa: E402
from triton_guard.guard.breaker import CircuitBreaker  # noqa: E402
from triton_guard.chaos.command import CLEAR, ChaosCommand  # noqa: E402
from triton_guard.chaos.protocol import ChaosControl, FaultKind  # noqa: E402
from triton_guard_demo.digits import heldout_split, load_digits_uint8  # noqa: E402
from triton_guard.guard.config import GuardConfig  # noqa: E402
from triton_guard.canary.probe import ModelHealthValidator  # noqa: E402
from triton_guard.perf import source_revision, start_run  # noqa: E402
from triton_guard.server import LocalServer, Ports  # noqa: E402
from triton_guard.guard.shared_state import SharedFileStore  # noqa: E402

OUT_DIR = REPO_ROOT / "out" / "replay"
PIPELINE = "pipeline"
UPSTREAM = defaults.CHAOS_TARGET_MODEL  # `classifier`: the hung model, and the breaker's name
FAULT = FaultKind.HANG.value

CONCURRENCY = 32
DURATION_S = 70.0
FAULT_AT_S = 10.0
CLEAR_AT_S = 30.0
# The shipped defaults: the replay is of production, not of a shortened copy.
TIMEOUT_MS = defaults.TIMEOUT_MS
FAILURE_THRESHOLD = defaults.FAILURE_THRESHOLD
RECOVERY_MS = defaults.RECOVERY_MS

CLIENT_TIMEOUT_S = 30.0  # far above the guard's deadline: the client never hides a hang
PROBE_PERIOD_S = 2.0  # the Deployment's readinessProbe: periodSeconds 10
PROBE_TIMEOUT_S = 4.0  # the Deployment's `triton-guard probe --timeout 4`
STATE_PERIOD_S = 0.1
CHAOS_TIMEOUT_S = 10.0
WARMUP_REQUESTS = 50  # sequential, before t = 0: first-call costs stay out of the timeline

OK, REJECTED, TIMED_OUT, OTHER = "ok", "rejected fast", "timed out", "other error"
OUTCOMES = (OK, REJECTED, TIMED_OUT, OTHER)
BREAKER, BULKHEAD, QUEUE = "breaker", "bulkhead", "queue"
FAST_REJECTIONS = {  # who rejected fast, by the message's words
    BREAKER: "Service temporarily unavailable",
    BULKHEAD: "overloaded",
    QUEUE: "Request timeout expired",
}
TIMEOUT_MARKERS = ("did not answer within", "passed after")  # the guard's deadline; expired before the guard
MESSAGES_KEPT = 8  # distinct messages (numbers masked) kept per outcome class in results.json
PROBE_REASON_CHARS = 200  # a not-ready probe's reasons in the timeline (results.json has them whole)

# Targets, as in the module docstring.
LATENCY_SLACK_S = 1.0
FIRST_REJECTION_SLACK_S = 1.0
RECOVERY_LIMIT_S = 10.0
BASELINE_FIRST_SECOND = 2
FULL_THROUGHPUT_FRACTION = 0.90
TARGET_KEYS = ("a", "b", "c", "d")  # the exit status; b' (the breaker's own first rejection) is shown beside b


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=DURATION_S, help="load duration (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="client threads (default: %(default)s)")
    parser.add_argument("--fault-at-s", type=float, default=FAULT_AT_S, help="hang injected (default: %(default)s)")
    parser.add_argument("--clear-at-s", type=float, default=CLEAR_AT_S, help="hang cleared (default: %(default)s)")
    parser.add_argument("--timeout-ms", type=int, default=TIMEOUT_MS, help="guard timeout_ms (default: %(default)s)")
    parser.add_argument(
        "--failure-threshold", type=int, default=FAILURE_THRESHOLD, help="guard failure_threshold (default: %(default)s)"
    )
    parser.add_argument("--recovery-ms", type=int, default=RECOVERY_MS, help="guard recovery_ms (default: %(default)s)")
    parser.add_argument(
        "--probe-period-s", type=float, default=PROBE_PERIOD_S, help="readiness probe period (default: %(default)s)"
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="a timestamped run folder goes here")
    args = parser.parse_args()
    if min(args.concurrency, args.timeout_ms, args.failure_threshold, args.recovery_ms) <= 0:
        parser.error("--concurrency, --timeout-ms, --failure-threshold and --recovery-ms must be positive")
    if args.probe_period_s <= 0:
        parser.error("--probe-period-s must be positive")
    if not BASELINE_FIRST_SECOND + 1 <= args.fault_at_s < args.clear_at_s < args.duration_s:
        parser.error(
            f"need {BASELINE_FIRST_SECOND + 1} <= --fault-at-s < --clear-at-s < --duration-s "
            "(the baseline throughput is measured before the fault)"
        )
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- recording -------------------------------------------------------------------------


def classify(exc: InferenceServerException) -> tuple[str, str | None]:
    """(outcome class, who rejected fast or None)."""
    message = exc.message() or str(exc)
    if any(marker in message for marker in TIMEOUT_MARKERS):
        return TIMED_OUT, None
    if str(exc.status()) == "StatusCode.UNAVAILABLE":
        for rejecter, marker in FAST_REJECTIONS.items():
            if marker in message:
                return REJECTED, rejecter
    return OTHER, None


def mask_numbers(message: str) -> str:
    """'next trial call in 7.3 s' and '... in 2.1 s' are the same message."""
    return re.sub(r"\d+(\.\d+)?", "N", message)


class Recorder:
    """Everything the threads observe, in seconds since t0 (time.monotonic)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.lock = threading.Lock()
        self.requests: list[tuple[float, float, str, str | None]] = []  # start, end, outcome, rejecter
        self.messages: dict[str, Counter] = {outcome: Counter() for outcome in OUTCOMES if outcome != OK}
        self.probes: list[dict] = []
        self.states: list[tuple[float, str]] = []
        self.events: list[dict] = []  # chaos commands
        self.load_stopped: float | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def request(self, start: float, end: float, outcome: str, rejecter: str | None, message: str | None) -> None:
        with self.lock:
            self.requests.append((start, end, outcome, rejecter))
            if message is not None:
                self.messages[outcome][mask_numbers(message)] += 1


def load_worker(url: str, images: np.ndarray, offset: int, stride: int, rec: Recorder, stop: threading.Event) -> None:
    client = grpcclient.InferenceServerClient(url)
    index = offset
    try:
        while not stop.is_set():
            image = grpcclient.InferInput("IMAGE", [1, 8, 8], "UINT8")
            image.set_data_from_numpy(images[index % len(images)][None])
            index += stride
            start = rec.now()
            try:
                client.infer(PIPELINE, [image], client_timeout=CLIENT_TIMEOUT_S)
                outcome, rejecter, message = OK, None, None
            except InferenceServerException as exc:
                (outcome, rejecter), message = classify(exc), exc.message() or str(exc)
            rec.request(start, rec.now(), outcome, rejecter, message)
    finally:
        client.close()


def probe_worker(url: str, period_s: float, fault_at_s: float, rec: Recorder, stop: threading.Event) -> None:
    """Probes on a fixed schedule, half a period out of phase with the fault; a late probe skips missed slots."""
    validator = ModelHealthValidator(url, timeout_s=PROBE_TIMEOUT_S)
    next_at = (fault_at_s + period_s / 2) % period_s
    while not stop.wait(max(0.0, next_at - rec.now())):
        start = rec.now()
        result = validator.check()
        end = rec.now()
        with rec.lock:
            rec.probes.append(
                {
                    "start": start,
                    "end": end,
                    "ready": result.ready,
                    "health": result.health.value,
                    "reasons": result.reasons,
                }
            )
        while next_at <= end:
            next_at += period_s


def state_worker(state_dir: Path, rec: Recorder, stop: threading.Event) -> None:
    breaker = CircuitBreaker(UPSTREAM, GuardConfig(), SharedFileStore(state_dir))
    while True:
        state = breaker.snapshot().state.name
        with rec.lock:
            rec.states.append((rec.now(), state))
        if stop.wait(STATE_PERIOD_S):
            return


def send_chaos(url: str, fault: str, rec: Recorder) -> None:
    """Send `fault` (or clear) for UPSTREAM to the `chaos` model, as `triton-guard chaos` does."""
    command = ChaosCommand.build(fault, UPSTREAM)
    text = grpcclient.InferInput("COMMAND", [1], "BYTES")
    text.set_data_from_numpy(np.array([command.to_json().encode()], dtype=np.object_))
    client = grpcclient.InferenceServerClient(url)
    sent = rec.now()
    try:
        result = client.infer(defaults.CHAOS_MODEL, [text], client_timeout=CHAOS_TIMEOUT_S)
    finally:
        client.close()
    acknowledged = rec.now()
    status = json.loads(result.as_numpy("STATUS")[0])
    rec.events.append({"event": fault, "sent": sent, "acknowledged": acknowledged, "status": status})
    log(f"t={sent:6.2f} s  chaos {fault}: acknowledged after {(acknowledged - sent) * 1000:.0f} ms")


def wait_until(rec: Recorder, t: float) -> None:
    time.sleep(max(0.0, t - rec.now()))


def run_replay(server: LocalServer, args: argparse.Namespace, images: np.ndarray) -> Recorder:
    warm = grpcclient.InferenceServerClient(server.grpc_url)
    for i in range(WARMUP_REQUESTS):
        image = grpcclient.InferInput("IMAGE", [1, 8, 8], "UINT8")
        image.set_data_from_numpy(images[i % len(images)][None])
        warm.infer(PIPELINE, [image], client_timeout=CLIENT_TIMEOUT_S)
    warm.close()

    rec = Recorder(time.monotonic())
    stop_load, stop_watch = threading.Event(), threading.Event()
    loaders = [
        threading.Thread(
            target=load_worker, args=(server.grpc_url, images, i, args.concurrency, rec, stop_load), daemon=True
        )
        for i in range(args.concurrency)
    ]
    watchers = [
        threading.Thread(
            target=probe_worker,
            args=(server.grpc_url, args.probe_period_s, args.fault_at_s, rec, stop_watch),
            daemon=True,
        ),
        threading.Thread(target=state_worker, args=(server.state_dir, rec, stop_watch), daemon=True),
    ]
    for thread in loaders + watchers:
        thread.start()
    try:
        wait_until(rec, args.fault_at_s)
        send_chaos(server.grpc_url, FAULT, rec)
        wait_until(rec, args.clear_at_s)
        send_chaos(server.grpc_url, CLEAR, rec)
        wait_until(rec, args.duration_s)
    finally:
        ChaosControl(server.chaos_dir).clear(UPSTREAM)  # an interrupted run must not leave callers hung
        stop_load.set()
        rec.load_stopped = rec.now()
        log(f"t={rec.load_stopped:6.2f} s  load stopped; waiting for requests in flight")
        for thread in loaders:
            thread.join(CLIENT_TIMEOUT_S + 5)
        stop_watch.set()
        for thread in watchers:
            thread.join(PROBE_TIMEOUT_S + 5)
    return rec


# --- analysis --------------------------------------------------------------------------


def per_second(rec: Recorder) -> list[dict]:
    """One row per second of end times: outcome counts, max latency, breaker states and probes."""
    last = max([int(r[1]) for r in rec.requests] + [int(t) for t, _ in rec.states] + [0])
    rows = [
        {"second": s, **{o: 0 for o in OUTCOMES}, "max_latency_ms": None, "states": [], "probes": []}
        for s in range(last + 1)
    ]
    for start, end, outcome, _ in rec.requests:
        row = rows[int(end)]
        row[outcome] += 1
        latency_ms = (end - start) * 1000
        row["max_latency_ms"] = max(row["max_latency_ms"] or 0.0, latency_ms)
    for t, state in rec.states:
        if state not in rows[int(t)]["states"]:
            rows[int(t)]["states"].append(state)
    for probe in rec.probes:
        rows[int(probe["start"])]["probes"].append(probe)
    return rows


def event_time(rec: Recorder, name: str) -> float:
    return next(e["sent"] for e in rec.events if e["event"] == name)


def targets(rec: Recorder, rows: list[dict], args: argparse.Namespace) -> list[dict]:
    timeout_s, recovery_s = args.timeout_ms / 1000, args.recovery_ms / 1000
    fault, clear = event_time(rec, FAULT), event_time(rec, CLEAR)

    latencies = np.array([end - start for start, end, _, _ in rec.requests])
    latency_limit = timeout_s + LATENCY_SLACK_S
    over = int((latencies > latency_limit).sum())

    rejection_limit = timeout_s + FIRST_REJECTION_SLACK_S
    rejections = [(end, rejecter) for _, end, outcome, rejecter in rec.requests if outcome == REJECTED and end >= fault]
    first_rejection = min(end for end, _ in rejections) - fault if rejections else None
    breaker_ends = [end for end, rejecter in rejections if rejecter == BREAKER]
    first_breaker = min(breaker_ends) - fault if breaker_ends else None

    not_ready = [p["start"] for p in rec.probes if not p["ready"] and p["end"] >= fault]
    probe_delay = min(not_ready) - fault if not_ready else None

    baseline_rows = rows[BASELINE_FIRST_SECOND : int(fault)]
    baseline = float(np.mean([row[OK] for row in baseline_rows]))
    full = [
        row["second"] + 1 - clear
        for row in rows
        if row["second"] >= int(clear) and row[OK] >= FULL_THROUGHPUT_FRACTION * baseline
    ]
    recovery_delay = min(full) if full else None
    recovery_limit = RECOVERY_LIMIT_S

    def row(key, name, value, limit, met, detail):
        return {"key": key, "target": name, "value": value, "limit": limit, "met": met, "detail": detail}

    return [
        row("a", f"no request longer than timeout + {LATENCY_SLACK_S:g} s", float(latencies.max()), latency_limit,
            over == 0, f"max latency {latencies.max():.2f} s; {over} of {len(latencies)} requests over {latency_limit:g} s"),
        row("b", "first fast rejection after the fault", first_rejection, rejection_limit,
            None if first_rejection is None else first_rejection <= rejection_limit,
            f"limit: one timeout ({timeout_s:g} s) + {FIRST_REJECTION_SLACK_S:g} s"),
        row("b'", "first breaker rejection (\"Service temporarily unavailable\") after the fault", first_breaker,
            rejection_limit, None if first_breaker is None else first_breaker <= rejection_limit,
            "the same limit, for the breaker alone (a queue or bulkhead rejection may come first)"),
        row("c", "first not-ready probe after the fault (from its start)", probe_delay, args.probe_period_s,
            None if probe_delay is None else probe_delay <= args.probe_period_s,
            f"probe every {args.probe_period_s:g} s, half a period out of phase with the fault"),
        row("d", "full throughput after the clear (to the end of the first full second)", recovery_delay,
            recovery_limit, None if recovery_delay is None else recovery_delay <= recovery_limit,
            f"full: >= {FULL_THROUGHPUT_FRACTION:.0%} of {baseline:.1f} ok/s (mean of seconds "
            f"{BASELINE_FIRST_SECOND}-{int(fault) - 1}) = {FULL_THROUGHPUT_FRACTION * baseline:.1f} ok/s; "
            f"recovery_ms alone: {recovery_s:g} s"),
    ]  # fmt: skip


# --- report ----------------------------------------------------------------------------


def fmt_s(value: float | None) -> str:
    return "not seen" if value is None else f"{value:.2f} s"


def targets_table(rows: list[dict]) -> str:
    lines = ["| | target | measured | limit | met | |", "|---|---|---:|---:|---|---|"]
    for t in rows:
        met = {True: "yes", False: "**no**", None: "**not seen**"}[t["met"]]
        lines.append(
            f"| {t['key']} | {t['target']} | {fmt_s(t['value'])} | {t['limit']:.2f} s | {met} | {t['detail']} |"
        )
    return "\n".join(lines)


def probe_cell(probes: list[dict]) -> str:
    words = []
    for p in probes:
        took = f"{(p['end'] - p['start']) * 1000:.0f} ms"
        words.append(f"ready ({took})" if p["ready"] else f"**NOT READY** ({took}): {'; '.join(p['reasons'])[:PROBE_REASON_CHARS]}")
    return "<br>".join(words)


def render_timeline(results: dict, rows: list[dict]) -> str:
    s = results["settings"]
    marks = [(e["sent"], e["event"]) for e in results["events"]] + [(results["load_stopped_s"], "load stopped")]
    events: dict[int, list[str]] = {}
    for t, name in marks:
        events.setdefault(int(t), []).append(f"{name} at {t:.2f} s")
    lines = [
        f"# Incident replay {results['started']}",
        "",
        f"Commit {results['commit']}; {results['machine']['cpus']} CPUs, load average "
        f"{results['machine']['loadavg_start']:.2f} at start, {results['machine']['loadavg_end']:.2f} at end.",
        f"`{PIPELINE}` under {s['concurrency']} client threads for {s['duration_s']:g} s; `{UPSTREAM}` hangs "
        f"from {results['fault_s']:.2f} s to {results['clear_s']:.2f} s. Guard: timeout_ms {s['timeout_ms']}, "
        f"failure_threshold {s['failure_threshold']}, recovery_ms {s['recovery_ms']}, probe_interval_ms "
        f"{s['probe_interval_ms']}; readiness probe every {s['probe_period_s']:g} s with a {PROBE_TIMEOUT_S:g} s timeout "
        "(the Deployment probes every 10 s).",
        "",
        targets_table(results["targets"]),
        "",
        f"{results['totals']['requests']} requests: "
        + ", ".join(f"{results['totals'][o]} {o}" for o in OUTCOMES)
        + " (fast rejections by "
        + ", ".join(f"{who} {n}" for who, n in results["fast_rejections_by"].items())
        + "). Seconds are by the time a request ended; the probe column by the time a probe started.",
        "",
        "| second | ok | rejected fast | timed out | other errors | max latency (ms) | breaker | probe |",
        "|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        second = str(row["second"])
        if row["second"] in events:
            second += f" ({'; '.join(events[row['second']])})"
        latency = "" if row["max_latency_ms"] is None else f"{row['max_latency_ms']:.0f}"
        lines.append(
            f"| {second} | {row[OK]} | {row[REJECTED]} | {row[TIMED_OUT]} | {row[OTHER]} | {latency} "
            f"| {', '.join(row['states'])} | {probe_cell(row['probes'])} |"
        )
    for outcome, messages in results["messages"].items():
        if messages:
            lines += ["", f"Most frequent {outcome} messages (numbers masked):", ""]
            lines += [f"- {count} x `{message}`" for message, count in messages]
    return "\n".join(lines) + "\n"


def state_spans(states: list[tuple[float, str]]) -> list[tuple[float, float, str]]:
    """Contiguous (from, to, state) spans of the sampled breaker state."""
    spans: list[tuple[float, float, str]] = []
    for t, state in states:
        if spans and spans[-1][2] == state:
            spans[-1] = (spans[-1][0], t, state)
        else:
            if spans:
                spans[-1] = (spans[-1][0], t, spans[-1][2])
            spans.append((t, t, state))
    return spans


def plot(results: dict, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {OK: "tab:green", REJECTED: "tab:orange", TIMED_OUT: "tab:red", OTHER: "tab:purple"}
    seconds = np.array([row["second"] for row in rows])
    fig, ax = plt.subplots(figsize=(13, 6))
    bottom = np.zeros(len(rows))
    for outcome in OUTCOMES:
        counts = np.array([row[outcome] for row in rows])
        ax.bar(seconds + 0.5, counts, width=0.9, bottom=bottom, color=colours[outcome], label=outcome)
        bottom += counts
    shaded = {"OPEN": ("red", 0.12), "HALF_OPEN": ("gold", 0.25)}
    labelled = set()
    for start, end, state in state_spans(results["states"]):
        if state in shaded:
            colour, alpha = shaded[state]
            label = None if state in labelled else f"breaker {state}"
            ax.axvspan(start, end, color=colour, alpha=alpha, lw=0, label=label)
            labelled.add(state)
    top = max(bottom.max(), 1) * 1.08
    not_ready = [p["start"] for p in results["probes"] if not p["ready"]]
    ready = [p["start"] for p in results["probes"] if p["ready"]]
    ax.plot(ready, [top] * len(ready), "o", color="tab:green", ms=5, label="probe ready (at its start)")
    ax.plot(not_ready, [top] * len(not_ready), "X", color="red", ms=9, label="probe NOT ready (at its start)")
    for name, t, style in (("hang", results["fault_s"], "-"), ("clear", results["clear_s"], "--")):
        ax.axvline(t, color="black", ls=style, lw=1.5, label=f"{name} ({t:.1f} s)")
    ax.set_ylim(0, top * 1.06)
    ax.set_xlim(0, seconds.max() + 1)
    ax.set_xlabel("seconds since load start (requests by end time)")
    ax.set_ylabel("requests per second")
    latency = ax.twinx()
    latency.plot(
        seconds + 0.5, [np.nan if r["max_latency_ms"] is None else r["max_latency_ms"] for r in rows],
        "k.-", lw=1, label="max latency",
    )  # fmt: skip
    s = results["settings"]
    limit_ms = s["timeout_ms"] + LATENCY_SLACK_S * 1000
    latency.axhline(limit_ms, color="grey", ls=":", lw=1, label=f"timeout + {LATENCY_SLACK_S:g} s")
    latency.set_ylabel("max latency of requests ending in the second (ms)")
    latency.set_ylim(0, max(limit_ms, np.nanmax([r["max_latency_ms"] or 0 for r in rows])) * 1.1)
    handles = ax.get_legend_handles_labels()
    more = latency.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper left", bbox_to_anchor=(1.07, 1))
    ax.set_title(
        f"{PIPELINE}, {s['concurrency']} clients: {UPSTREAM} hangs; guard timeout {s['timeout_ms']} ms, "
        f"{s['failure_threshold']} failures, recovery {s['recovery_ms']} ms"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(path: Path, results: dict) -> None:
    """Indented JSON, but one line per request record (there are tens of thousands)."""
    head = json.dumps({k: v for k, v in results.items() if k != "requests"}, indent=1)
    records = ",\n  ".join(json.dumps(record) for record in results["requests"])
    path.write_text(f'{head[:-2]},\n "requests": [\n  {records}\n ]\n}}\n')


def main() -> int:
    args = parse_args()
    started, run_dir, loadavg_start = start_run(args.out)
    _, _, images, _ = heldout_split(*load_digits_uint8())
    with tempfile.TemporaryDirectory(prefix="replay-") as tmp, open(run_dir / "tritonserver.log", "w") as server_log:
        repository = fast_model_repository(
            Path(tmp),
            timeout_ms=args.timeout_ms,
            failure_threshold=args.failure_threshold,
            recovery_ms=args.recovery_ms,
        )
        server = LocalServer(
            model_repository=repository, ports=Ports.free(), log=server_log, chaos=True
        )
        log(f"starting tritonserver --chaos (log: {run_dir / 'tritonserver.log'})")
        with server:
            log(f"replay: {args.concurrency} clients for {args.duration_s:g} s")
            rec = run_replay(server, args, images)
    rows = per_second(rec)
    totals = Counter(outcome for _, _, outcome, _ in rec.requests)
    rejecters = Counter(rejecter for _, _, _, rejecter in rec.requests if rejecter is not None)
    results = {
        "started": started,
        "commit": source_revision(REPO_ROOT),
        "machine": {"cpus": os.cpu_count(), "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg()[0]},
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "client_timeout_s": CLIENT_TIMEOUT_S,
            "probe_timeout_s": PROBE_TIMEOUT_S,
            "state_period_s": STATE_PERIOD_S,
            "probe_interval_ms": defaults.PROBE_INTERVAL_MS,
        },
        "fault_s": event_time(rec, FAULT),
        "clear_s": event_time(rec, CLEAR),
        "load_stopped_s": rec.load_stopped,
        "events": rec.events,
        "targets": targets(rec, rows, args),
        "totals": {"requests": len(rec.requests), **{o: totals[o] for o in OUTCOMES}},
        "fast_rejections_by": {r: rejecters[r] for r in FAST_REJECTIONS},
        "seconds": [{**row, "probes": len(row["probes"])} for row in rows],
        "messages": {o: rec.messages[o].most_common(MESSAGES_KEPT) for o in rec.messages},
        "probes": rec.probes,
        "states": rec.states,
        "request_columns": ["start_s", "end_s", "outcome", "rejected_by"],
        "requests": [[round(start, 4), round(end, 4), outcome, who] for start, end, outcome, who in rec.requests],
    }
    write_results(run_dir / "results.json", results)
    (run_dir / "timeline.md").write_text(render_timeline(results, rows))
    plot(results, rows, run_dir / "timeline.png")
    print(targets_table(results["targets"]))
    log(f"written: {run_dir / 'timeline.md'}, {run_dir / 'timeline.png'}, {run_dir / 'results.json'}")
    return 0 if all(t["met"] for t in results["targets"] if t["key"] in TARGET_KEYS) else 1


if __name__ == "__main__":
    sys.exit(main())
