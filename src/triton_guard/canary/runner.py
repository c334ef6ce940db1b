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
* The sampler: every `sample_interval_ms` one memory sample for the leak
  trend (in total and per model instance: canary/memory_watch.py) and one
  metrics sample for the stall detector, and a full run every
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
from triton_guard.canary import overload
from triton_guard.canary.config import CanaryConfig
from triton_guard.canary.golden_check import NO_GOLDENS_NOTE, CaseComparison, compare_case
from triton_guard.canary.golden_store import GoldenStore
from triton_guard.canary.goldens import GoldenCase
from triton_guard.canary.instances import InstanceSampler
from triton_guard.canary.leak_reload import Reload
from triton_guard.canary.memory_watch import MemoryWatch
from triton_guard.canary.report import CanaryReport, CheckResult
from triton_guard.guard.breaker import BreakerSnapshot, State

READY_STATE = "READY"


class ServerFacts(Protocol):
    """What the canary asks of the server it runs in."""

    metrics_url: str | None

    def fetch_metrics(self, timeout_s: float) -> list[promtext.Sample]: ...
    def model_states(self, timeout_s: float) -> dict[str, tuple[str, str]]: ...  # {model: (state, reason)}
    def model_config(self, model: str, timeout_s: float) -> dict: ...  # as Triton's /v2/models/<m>/config
    def is_model_ready(self, model: str) -> bool: ...
    def infer(self, model: str, inputs: Mapping[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]: ...
    def breakers(self) -> list[BreakerSnapshot]: ...
    def breaker_claimants(self, name: str) -> list[str]: ...  # the guard models that claimed breaker `name`
    def breaker_held(self, name: str, model: str) -> bool | None: ...  # a live process of `model` guards it (None: unknown)
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
        sleep: Callable[[float], None] = time.sleep,
        instances: InstanceSampler | None = None,
        allocator_dir: str | None = None,
        reload: Reload | None = None,
    ) -> None:
        """`instances`, `allocator_dir` and `reload` feed and act on the per-instance leak trend
        (canary/memory_watch.py); without them the trend is the total's only."""
        self.config = config
        self.facts = facts
        self.goldens = goldens
        self.runtime = dict(runtime)
        self.clock = clock
        self.memory = MemoryWatch(config, clock, facts.warn, instances, allocator_dir, reload)
        self.stall = verdicts.StallDetector()
        # Overload is not a fault: golden misses judged with the server's evidence (canary/overload.py).
        self.overload = overload.OverloadJudge(
            config.overload_evidence_s, config.overload_grace_s, config.overload_window_s, clock)
        self._capacity = overload.CapacityCache(lambda m: facts.model_config(m, 1.0), clock=clock)
        self._sleep = sleep
        self._device_class = None if config.device_class == "auto" else config.device_class
        self._facts_lock = threading.Lock()  # the stall detector is fed by two threads
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
        facts, trend_snapshot, misses, before = self._gather(config, deadline)
        checks = verdicts.judge(config, facts)
        checks.append(self._overload_check(checks, facts.goldens, misses, before, deadline))
        notes = [NO_GOLDENS_NOTE] if facts.goldens is None else []
        report = CanaryReport(
            checks, self.clock() - started, facts.device_class, notes=notes, metrics_url=self.facts.metrics_url)
        if config == self.config:  # a probe's one-off thresholds are not the server's state
            self.facts.publish(report, facts.reading, trend_snapshot)
        return report

    def _gather(self, config: CanaryConfig, deadline: float):
        """This run's facts, asked of the server in this order, the memory floor with the trend to it,
        the golden inferences that got no answer ({model: overload.GoldenMiss}) and the first look at the server."""
        samples, metrics_error = self._metrics(deadline)
        before = self._look(samples)
        device_class = self._resolve_device_class(samples)
        # Goldens first: through a guard, the golden inference is also the breaker's trial call.
        misses: dict[str, overload.GoldenMiss] = {}
        goldens = self._golden_comparisons(config, device_class, deadline, misses)
        ready_by_model, not_ready_why, liveness_error = self._liveness(config, deadline)
        reading, memory_error = self._memory(device_class, samples)
        floor, leak, trend_snapshot = 0, None, None
        if reading is not None:
            floor = memory.floor_bytes(reading.total_bytes, config.headroom_floor_fraction, config.headroom_floor_mb)
            # Only the server's own runs act (a leak reload), never a probe's one-off thresholds.
            leak = self.memory.assess(config, reading, floor, act=config == self.config)
            trend_snapshot = (floor, leak)
        waiting = None
        if samples is not None:
            pending = self._feed_stall(samples)
            with self._facts_lock:
                waiting = self.stall.waiting(self.clock(), pending)
        breakers, breakers_at = self.facts.breakers(), time.monotonic()
        orphaned = self._orphaned(breakers)
        if self.runtime.get("tritonserver") is None:  # HTTP is not up while models load
            self.runtime["tritonserver"] = self.facts.server_version()
        runtime = dict(self.runtime)
        drift, drift_at = self.facts.drift_state(), time.monotonic()
        facts = verdicts.RunFacts(
            device_class, goldens, ready_by_model, not_ready_why, liveness_error, reading, memory_error,
            floor, leak, waiting, metrics_error, breakers, breakers_at, runtime, drift, drift_at, orphaned)
        return facts, trend_snapshot, misses, before

    def _orphaned(self, breakers: list[BreakerSnapshot]) -> frozenset[str]:
        """The breakers, not CLOSED, that no live guard process holds any more (guard/holders.py: unguarded, or
        unloaded): nothing will ever call or probe them again, so they must not hold the pod out of service."""
        return frozenset(
            b.name for b in breakers
            if b.state is not State.CLOSED and (claimants := self.facts.breaker_claimants(b.name))
            and all(self.facts.breaker_held(b.name, m) is False for m in claimants))

    def _overload_check(self, checks, goldens, misses, before, deadline) -> CheckResult:
        """Golden misses that are load become overloaded, not failed (rewritten in `checks`); the overload check."""
        self.overload.note_goldens(goldens)
        results = {c.name: c for c in checks}
        judged = overload.review(self.overload, results, misses, before,
                                 lambda: self._look(self._metrics(deadline)[0]), deadline, self._sleep)
        checks[:] = [results[c.name] for c in checks]
        return self.overload.check(judged, self._capacity.of([m for m, n in self.overload.inside().items() if n > 1]))

    def _look(self, samples) -> overload.Counters | None:
        if samples is None:
            return None
        counters = overload.Counters.from_samples(self.clock(), samples)
        with self._facts_lock:
            self.overload.observe(counters)
        return counters

    # --- goldens --------------------------------------------------------------------

    def _golden_comparisons(self, config, device_class: str, deadline: float, misses: dict):
        """{model: its golden comparisons, or why there are none}; None when no model has goldens.

        Each golden inference that got no answer goes into `misses` too (for canary/overload.py)."""
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
                waited = self.clock() - previous[0]
                results[model] = f"the previous golden inference of '{model}' is still unanswered after {waited:.1f} s"
                misses[model] = overload.GoldenMiss(model, overload.MissKind.PENDING, results[model], waited)
                continue
            future = self._worker(model).submit(self._infer_cases, model, cases, device_class)
            self._golden_calls[model] = (self.clock(), future)
            pending[model] = future
        for model, future in pending.items():
            kind = None
            try:
                results[model] = future.result(timeout=max(deadline - self.clock(), 0.0))
            except FutureTimeout:
                results[model], kind = f"no answer from '{model}' within the {config.deadline_ms} ms deadline", "late"
            except Exception as exc:
                results[model], kind = f"'{model}' failed: {exc}", "refused"
            if kind is not None:
                waited = self.clock() - self._golden_calls[model][0]
                misses[model] = overload.GoldenMiss(model, overload.MissKind(kind), results[model], waited)
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
        """One sample: memory (in total and per instance) into the leak trend, model progress into the stall detector."""
        samples, _ = self._metrics(self.clock() + 1.0)
        device_class = self._resolve_device_class(samples)
        reading, _ = self._memory(device_class, samples)
        if reading is not None:
            self.memory.sample(self.clock(), reading, device_class)
        if samples is not None:
            self._feed_stall(samples)
            self._look(samples)

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
