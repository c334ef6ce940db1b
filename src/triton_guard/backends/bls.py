"""The guard inside Triton: BLS calls to an upstream model behind a `Guard`.

Import this only inside a Triton Python model (it needs the stub's
`triton_python_backend_utils`). It serves both placements:

* the `guard` backend (triton_guard/backends/guard/model.py), a step of its own;
* a library call from a user's own Python model, which saves a hop::

      from triton_guard.backends.bls import GuardedUpstream

      class TritonPythonModel:
          def initialize(self, args):
              self.classifier = GuardedUpstream("classifier", timeout_ms="2000")

          def execute(self, requests):
              ...
              result = self.classifier.infer({"PIXELS": pixels}, ["PROBS"])
              if not result.ok:
                  return [self.classifier.error_response(result) for _ in requests]
              probs = result.value["PROBS"]

Every instance of every model that guards the same upstream shares one
breaker per server (a small shared-memory file, see shared_state.py).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from typing import Mapping, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_guard import defaults
from triton_guard import metrics as catalogue
from triton_guard.backends import metric_families
from triton_guard.guard import metrics as gm
from triton_guard.guard.breaker import CircuitBreaker
from triton_guard.guard.failures import FailureClassifier, is_stub_dead
from triton_guard.guard.core import Code, Guard, GuardResult
from triton_guard.guard.config import ConfigError, GuardConfig
from triton_guard.guard.shared_state import SharedFileStore, default_state_dir, read_json_state, write_json_state

METRICS_PUBLISH_S = 1.0  # how often buffered guard metrics reach /metrics
# Guard parameters beyond GuardConfig's thresholds.
EXTRA_PARAMETERS = frozenset({"client_error_pattern", "heal_dead_upstream"})


class GuardedUpstream:
    """One upstream model behind a breaker, a bulkhead and a hard deadline.

    `parameters` are the guard parameters as strings (config.pbtxt style);
    anything not given takes its default from triton_guard.defaults. A bad
    value raises ConfigError naming the parameter.
    """

    def __init__(self, upstream: str, *, instance_name: str = "", **parameters: str) -> None:
        unknown = sorted(set(parameters) - GuardConfig.parameter_names() - EXTRA_PARAMETERS)
        if unknown:
            raise ConfigError(f"unknown guard parameter(s) {unknown}; known: {sorted(GuardConfig.parameter_names())}")
        self.upstream = upstream
        self.called = False  # set by the first infer: metrics publish from then on
        self.config = GuardConfig.from_parameters(parameters)
        self.breaker = CircuitBreaker(upstream, self.config, SharedFileStore(default_state_dir()))
        self.metrics_buffer = gm.MetricsBuffer()
        self.guard = Guard(
            upstream,
            self.config,
            self.breaker,
            FailureClassifier(parameters.get("client_error_pattern")),
            events=self.metrics_buffer,
        )
        # pb_utils.TritonError exists only once the stub runs, not at import.
        self._error_codes = {
            Code.UNAVAILABLE: pb_utils.TritonError.UNAVAILABLE,
            Code.INVALID_ARG: pb_utils.TritonError.INVALID_ARG,
            Code.INTERNAL: pb_utils.TritonError.INTERNAL,
        }
        heal = parameters.get("heal_dead_upstream", str(defaults.HEAL_DEAD_UPSTREAM)).strip().lower()
        if heal not in ("true", "false"):
            raise ConfigError(f"heal_dead_upstream={heal!r} is invalid: expected true or false")
        self._healer = _Healer(upstream, self.config.recovery_ms / 1000) if heal == "true" else None
        self._publisher = _MetricsPublisher(self, instance_name or upstream)
        self._publisher.start()

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], budget_s: float | None = None
    ) -> GuardResult:
        """One guarded BLS call; on success `result.value` maps output names to arrays.

        `budget_s`: what is left of the callers' deadline, if they waited before this call.
        """
        self.called = True

        def upstream_call(timeout_s: float):
            request = pb_utils.InferenceRequest(
                model_name=self.upstream,
                inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
                requested_output_names=list(output_names),
                # Also bounds the time in the upstream's queue (needs its queue policy).
                timeout=int(timeout_s * 1_000_000),
            )
            response = request.exec()
            if response.has_error():
                message = response.error().message()
                # Seen here too when the guard gave up on this call long ago.
                if self._healer is not None and is_stub_dead(message):
                    self._healer.request()
                return message
            return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in output_names}

        # A string answer is the upstream's error message (BLS reports errors in the response).
        return self.guard.call(
            upstream_call, error_of=lambda answer: answer if isinstance(answer, str) else None, budget_s=budget_s
        )

    def error_response(self, result: GuardResult):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(result.message, self._error_codes[result.code]))

    def close(self) -> None:
        self._publisher.stop()
        self.guard.close()


class _MetricsPublisher(threading.Thread):
    """Drains a guard's buffered events onto Triton's /metrics, off the request path."""

    def __init__(self, upstream: GuardedUpstream, instance_name: str) -> None:
        super().__init__(name=f"guard-metrics-{upstream.upstream}", daemon=True)
        self._upstream = upstream
        self._stop = threading.Event()
        self.labels = {"model": upstream.upstream}
        histogram = catalogue.UPSTREAM_CALL_SECONDS
        # Families must outlive their metrics (facts section 2): keep them on self.
        self.families = {
            "state": metric_families.family(catalogue.BREAKER_STATE),
            "transitions": metric_families.family(catalogue.BREAKER_TRANSITIONS),
            "rejections": metric_families.family(catalogue.REJECTIONS),
            "failures": metric_families.family(catalogue.UPSTREAM_FAILURES),
            "inflight": metric_families.family(catalogue.INFLIGHT_CALLS),
            **{suffix[1:]: f for suffix, f in metric_families.histogram_families(histogram).items()},
        }
        self.state = self.families["state"].Metric(labels=self.labels)
        self.inflight = self.families["inflight"].Metric(labels={**self.labels, "instance": instance_name})
        self.buckets = [self.families["bucket"].Metric(labels={**self.labels, "le": le}) for le in histogram.bucket_bounds]
        self.seconds_sum = self.families["sum"].Metric(labels=self.labels)
        self.seconds_count = self.families["count"].Metric(labels=self.labels)
        self._counters: dict = {}

    def _counter(self, family: str, label: str, value: str):
        key = (family, value)
        if key not in self._counters:
            self._counters[key] = self.families[family].Metric(labels={**self.labels, label: value})
        return self._counters[key]

    def run(self) -> None:
        while not self._stop.wait(METRICS_PUBLISH_S):
            self.publish()

    def publish(self) -> None:
        if not self._upstream.called:
            # No stub-to-server call from this thread before the model has
            # served a request: during start-up it can race the stub's own
            # initialisation messages.
            return
        delta = self._upstream.metrics_buffer.drain()
        for reason, n in delta.rejections.items():
            self._counter("rejections", "reason", reason).increment(n)
        for reason, n in delta.failures.items():
            self._counter("failures", "reason", reason).increment(n)
        for state, n in delta.transitions.items():
            self._counter("transitions", "to", state).increment(n)
        if delta.call_seconds:  # a bounded number of round trips, however busy the guard
            for bucket, n in zip(self.buckets, gm.cumulative_bucket_counts(delta.call_seconds)):
                if n:
                    bucket.increment(n)
            self.seconds_sum.increment(sum(delta.call_seconds))
            self.seconds_count.increment(len(delta.call_seconds))
        # The breaker is one per server: every instance publishes the same value.
        self.state.set(int(self._upstream.breaker.snapshot().state))
        self.inflight.set(self._upstream.guard.inflight)

    def stop(self) -> None:
        self._stop.set()


class _Healer:
    """Reloads an upstream whose Python stub died: the pod heals without a restart.

    Triton 24.10 never restarts a dead stub; its model stays READY while every
    request fails "Stub process ... is not healthy". Unloading and loading the
    model (the server runs with --model-control-mode=explicit) starts a new
    stub. Every guard instance of the server may see the death; a file lock
    and a shared time stamp make one of them reload, at most once per
    `min_interval_s` (the breaker's recovery period).
    """

    def __init__(self, upstream: str, min_interval_s: float) -> None:
        self.upstream = upstream
        self.min_interval_s = min_interval_s
        self._state_dir = default_state_dir()
        self._stamp = f"heal-{upstream}.json"
        self._busy = threading.Lock()

    def request(self) -> None:
        if self._busy.acquire(blocking=False):  # one reload thread per process at most
            threading.Thread(target=self._heal, name=f"heal-{self.upstream}", daemon=True).start()

    def _heal(self) -> None:
        try:
            os.makedirs(self._state_dir, exist_ok=True)
            with open(os.path.join(self._state_dir, f"{self._stamp}.lock"), "w") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # another guard instance is reloading it now
                last = read_json_state(self._state_dir, self._stamp) or {}
                now = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the host
                if now - last.get("at", -1e18) < self.min_interval_s:
                    return
                write_json_state(self._state_dir, self._stamp, {"at": now, "pid": os.getpid()})
                pb_utils.Logger.log_warn(f"guard: upstream '{self.upstream}' has a dead stub; reloading it")
                pb_utils.unload_model(self.upstream)
                pb_utils.load_model(self.upstream)
                pb_utils.Logger.log_info(f"guard: upstream '{self.upstream}' reloaded")
        except Exception as exc:  # the breaker keeps failing fast; the next death tries again
            pb_utils.Logger.log_error(f"guard: reloading '{self.upstream}' failed: {exc}")
        finally:
            self._busy.release()
