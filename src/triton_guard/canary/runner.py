"""The canary's orchestration, as plain Python: runs, golden inferences, the sampler.

`Canary` decides what is checked and when; `ServerFacts` is everything it
needs from the server it lives in (the `canary` backend,
triton_guard.backends.canary, implements the Triton parts: BLS inference,
model readiness, logging, metrics; unit tests pass a fake).

* A run is given one `CanaryConfig` (canary/config.py), gathers the server's
  facts into one `RunFacts` and has canary/checks.py judge them in one call;
  the golden cases come from the `GoldenStore` (canary/golden_store.py), each
  answer is compared as it comes (canary/golden_check.py).
* A run checks everything within `deadline_ms`. A probe arriving while a run
  with the same config is in flight joins it instead of queueing another.
* Golden inferences: one worker per model with goldens, so a hung model costs
  its own check, never another's; a model whose previous golden inference is
  still unanswered is not called again (that is its verdict).
* The sampler: every `sample_interval_ms` one free-memory sample for the leak
  trend and one metrics sample for the stall detector, and a full run every
  `interval_ms` so the canary's gauges stay fresh. Only the sampler feeds the
  trend, so its samples are evenly spaced whatever the probe rate.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from typing import Callable, Mapping, Protocol

import numpy as np

from triton_guard import defaults, promtext
from triton_guard.canary import checks as verdicts
from triton_guard.canary import memory
from triton_guard.canary.config import CanaryConfig
from triton_guard.canary.golden_check import NO_GOLDENS_NOTE, CaseComparison, compare_case
from triton_guard.canary.golden_store import GoldenStore
from triton_guard.canary.goldens import GoldenCase
from triton_guard.canary.report import CanaryReport
from triton_guard.guard.breaker import BreakerSnapshot

READY_STATE = "READY"


class ServerFacts(Protocol):
    """What the canary asks of the server it runs in."""

    metrics_url: str | None

    def fetch_metrics(self, timeout_s: float) -> list[promtext.Sample]: ...
    def model_states(self, timeout_s: float) -> dict[str, tuple[str, str]]: ...  # {model: (state, reason)}
    def is_model_ready(self, model: str) -> bool: ...
    def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]: ...
    def breakers(self) -> list[BreakerSnapshot]: ...
    def drift_state(self) -> dict[str, dict]: ...  # {monitored model: its state} (triton_guard.drift.state)
    def system_memory(self) -> memory.MemoryReading: ...
    def server_version(self) -> str | None: ...
    def server_ready(self) -> bool: ...
    def warn(self, message: str) -> None: ...
    def publish(self, report: CanaryReport, reading, trend_snapshot) -> None: ...


class Canary:
    def __init__(
        self,
        config: CanaryConfig,
        facts: ServerFacts,
        goldens: GoldenStore,
        runtime: dict[str, str | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.facts = facts
        self.goldens = goldens
        self.runtime = dict(runtime)
        self.clock = clock
        self.trend = memory.LeakTrend(config.trend_window_s, config.trend_min_samples, config.trend_min_span_s)
        self.stall = verdicts.StallDetector()
        self._device_class = None if config.device_class == "auto" else config.device_class
        self._facts_lock = threading.Lock()  # trend and stall are fed by two threads
        self._workers: dict[str, ThreadPoolExecutor] = {}
        self._golden_calls: dict[str, tuple[float, Future]] = {}
        self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="canary-run")
        self._run_lock = threading.Lock()
        self._current_run: tuple[CanaryConfig, Future] | None = None
        self._stop = threading.Event()
        self._served = threading.Event()  # a probe arrived: the server serves
        self._sampler: threading.Thread | None = None

    # --- runs ---------------------------------------------------------------------

    def mark_served(self) -> None:
        self._served.set()

    def run_shared(self, config: CanaryConfig) -> CanaryReport:
        """A run with this config; a caller arriving during one joins it instead of queueing."""
        with self._run_lock:
            run = self._current_run
            if run is None or run[1].done() or run[0] != config:
                run = (config, self._runner.submit(self.run, config))
                self._current_run = run
        limit_s = 2 * config.deadline_ms / 1000
        try:
            return run[1].result(timeout=limit_s)
        except FutureTimeout:
            return CanaryReport(
                [verdicts.not_run("canary", "an earlier run is still busy past its deadline")],
                limit_s, self._device_class or "unknown", metrics_url=self.facts.metrics_url)

    def run(self, config: CanaryConfig) -> CanaryReport:
        """Every check now, within config.deadline_ms."""
        started = self.clock()
        deadline = started + config.deadline_ms / 1000
        facts, trend_snapshot = self._gather(config, deadline)
        checks = verdicts.judge(config, facts)
        notes = [NO_GOLDENS_NOTE] if facts.goldens is None else []
        report = CanaryReport(
            checks, self.clock() - started, facts.device_class, notes=notes, metrics_url=self.facts.metrics_url)
        if config == self.config:  # a probe's one-off thresholds are not the server's state
            self.facts.publish(report, facts.reading, trend_snapshot)
        return report

    def _gather(self, config: CanaryConfig, deadline: float) -> tuple[verdicts.RunFacts, tuple | None]:
        """This run's facts, asked of the server in this order, and the memory floor with the trend to it."""
        samples, metrics_error = self._metrics(deadline)
        device_class = self._resolve_device_class(samples)
        # Goldens first: through a guard, the golden inference is also the breaker's trial call.
        goldens = self._golden_comparisons(config, device_class, deadline)
        ready_by_model, not_ready_why, liveness_error = self._liveness(config, deadline)
        reading, memory_error = self._memory(device_class, samples)
        floor, trend, n, span_s, trend_snapshot = 0, None, 0, None, None
        if reading is not None:
            floor = memory.floor_bytes(reading.total_bytes, config.headroom_floor_fraction, config.headroom_floor_mb)
            with self._facts_lock:
                trend, n, span_s = self.trend.trend(floor), len(self.trend), self.trend.span_s
            trend_snapshot = (floor, trend)
        waiting = None
        if samples is not None:
            pending = self._feed_stall(samples)
            with self._facts_lock:
                waiting = self.stall.waiting(self.clock(), pending)
        breakers, breakers_at = self.facts.breakers(), time.monotonic()
        if self.runtime.get("tritonserver") is None:  # HTTP is not up while models load
            self.runtime["tritonserver"] = self.facts.server_version()
        runtime = dict(self.runtime)
        drift, drift_at = self.facts.drift_state(), time.monotonic()
        facts = verdicts.RunFacts(
            device_class, goldens, ready_by_model, not_ready_why, liveness_error, reading, memory_error,
            floor, trend, n, span_s, waiting, metrics_error, breakers, breakers_at, runtime, drift, drift_at)
        return facts, trend_snapshot

    # --- goldens --------------------------------------------------------------------

    def _golden_comparisons(self, config, device_class: str, deadline: float):
        """{model: its golden comparisons, or why there are none}; None when no model has goldens."""
        found = self.goldens.cases()
        if not found:
            return None
        results: dict[str, list[CaseComparison] | str] = {}
        pending: dict[str, Future] = {}
        for model, cases in sorted(found.items()):
            if isinstance(cases, str):
                results[model] = cases
                continue
            missing = [c.name for c in cases if device_class not in c.expected]
            if missing:
                results[model] = (
                    f"case(s) {', '.join(missing)} have no outputs for device class '{device_class}': record them on a "
                    f"{device_class} server (triton-guard goldens record --model {model} ...)")
                continue
            previous = self._golden_calls.get(model)
            if previous is not None and not previous[1].done():
                results[model] = (
                    f"the previous golden inference of '{model}' is still unanswered after "
                    f"{self.clock() - previous[0]:.1f} s")
                continue
            future = self._worker(model).submit(self._infer_cases, model, cases, device_class)
            self._golden_calls[model] = (self.clock(), future)
            pending[model] = future
        for model, future in pending.items():
            try:
                results[model] = future.result(timeout=max(deadline - self.clock(), 0.0))
            except FutureTimeout:
                results[model] = f"no answer from '{model}' within the {config.deadline_ms} ms deadline"
            except Exception as exc:
                results[model] = f"'{model}' failed: {exc}"
        return results

    def _worker(self, model: str) -> ThreadPoolExecutor:
        if model not in self._workers:
            self._workers[model] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"canary-golden-{model}")
        return self._workers[model]

    def _infer_cases(self, model: str, cases: list[GoldenCase], device_class: str) -> list[CaseComparison]:
        comparisons = []
        for case in cases:
            expected = case.expected[device_class]
            answer = self.facts.infer(model, case.inputs, list(expected.outputs))
            comparisons.append(compare_case(case, device_class, answer))
        return comparisons

    # --- the other facts ---------------------------------------------------------------

    def _metrics(self, deadline: float):
        try:
            return self.facts.fetch_metrics(max(deadline - self.clock(), 0.05)), None
        except Exception as exc:  # unreachable, timeout, unparsable: the check says so
            return None, f"metrics unavailable: {exc}"

    def _resolve_device_class(self, samples) -> str:
        if self._device_class is None and samples is not None:
            gpu = memory.read_gpu(promtext.sum_by_name(samples))
            self._device_class = "gpu" if gpu is not None else "cpu"
        return self._device_class or "cpu"

    def _memory(self, device_class: str, samples):
        if device_class == "gpu":
            if samples is None:
                return None, "GPU memory unknown: server metrics unavailable"
            reading = memory.read_gpu(promtext.sum_by_name(samples))
            return reading, None if reading else "no GPU memory gauges on /metrics"
        try:
            return self.facts.system_memory(), None
        except (OSError, ValueError, KeyError) as exc:
            return None, f"memory unreadable: {exc}"

    def _liveness(self, config, deadline: float):
        """({model: ready}, {model: why not ready}, None), or (None, None, why the models could not be listed)."""
        if config.models:
            return {m: self.facts.is_model_ready(m) for m in config.models}, None, None
        try:
            states = self.facts.model_states(max(deadline - self.clock(), 0.05))
        except Exception as exc:
            return None, None, f"cannot list the server's models: {exc}"
        why = {m: f"{s}: {r}" if r else s for m, (s, r) in states.items() if s != READY_STATE}
        return {m: s == READY_STATE for m, (s, _) in states.items()}, why, None

    def _feed_stall(self, samples) -> dict[str, float]:
        pending = promtext.by_label(samples, "nv_inference_pending_request_count", "model")
        executed = promtext.by_label(samples, "nv_inference_exec_count", "model")
        with self._facts_lock:
            self.stall.update(self.clock(), pending, executed)
        return pending

    # --- the sampler ------------------------------------------------------------------

    def sample(self) -> None:
        """One sample: free memory into the trend, model progress into the stall detector."""
        samples, _ = self._metrics(self.clock() + 1.0)
        reading, _ = self._memory(self._resolve_device_class(samples), samples)
        if reading is not None:
            with self._facts_lock:
                self.trend.add(self.clock(), reading.free_bytes)
        if samples is not None:
            self._feed_stall(samples)

    def start(self) -> None:
        self._sampler = threading.Thread(target=self._sampler_loop, name="canary-sampler", daemon=True)
        self._sampler.start()

    def _sampler_loop(self) -> None:
        next_run = self.clock() + self.config.interval_ms / 1000
        server_ready = False
        while not self._stop.wait(self.config.sample_interval_ms / 1000):
            try:
                # History starts once the server serves: loading models is not a leak.
                server_ready = server_ready or self._served.is_set() or self.facts.server_ready()
                if not server_ready:
                    continue
                self.sample()
                if self.clock() >= next_run:
                    next_run = self.clock() + self.config.interval_ms / 1000
                    self.run_shared(self.config)
            except Exception as exc:  # the sampler must outlive any one bad sample
                if server_ready:  # no call into the server before it serves
                    self.facts.warn(f"canary sampler: {exc}")

    def close(self, timeout_s: float = defaults.CANARY_STOP_JOIN_S) -> bool:
        """Stop the sampler and wait (at most timeout_s) for it and a run in flight; True when both ended.

        A golden inference stuck in a hung model cannot be interrupted: its
        worker is abandoned (its future cancelled if it had not started).
        """
        until = time.monotonic() + timeout_s
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout_s)
        with self._run_lock:
            run = self._current_run
        if run is not None:
            wait_futures([run[1]], timeout=max(until - time.monotonic(), 0.0))
        self._runner.shutdown(wait=False, cancel_futures=True)
        for worker in self._workers.values():
            worker.shutdown(wait=False, cancel_futures=True)
        sampler_done = self._sampler is None or not self._sampler.is_alive()
        return sampler_done and (run is None or run[1].done())
