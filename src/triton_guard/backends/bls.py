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
              result = self.classifier.infer({"PIXELS": pixels}, ["PROBS"], requests=len(requests))
              if not result.ok:
                  return [self.classifier.error_response(result) for _ in requests]
              probs = result.value["PROBS"]

Every instance of every model that guards the same upstream shares one
breaker per server (a small shared-memory file, see shared_state.py).

`requests=len(requests)`: thresholds count requests, so a call carrying a
whole dynamic batch records one outcome per request. While the breaker is
OPEN a thread probes the upstream (triton_guard.guard.recovery) with one row
of the last good call's inputs (`upstream_batches=True`; else the whole
inputs of that call), copied at most every PROBE_SAMPLE_REFRESH_S.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Callable, Mapping, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_guard import defaults
from triton_guard import metrics as catalogue
from triton_guard.backends import metric_families
from triton_guard.backends.drift_tap import DriftTap
from triton_guard.guard import metrics as gm
from triton_guard.guard.batching import split_like
from triton_guard.guard.breaker import CircuitBreaker
from triton_guard.guard.failures import FailureClassifier, is_stub_dead
from triton_guard.guard.core import Code, Guard, GuardResult
# EXTRA_PARAMETERS stays importable from here (the in-process placement reads it).
from triton_guard.guard.config import EXTRA_PARAMETERS, ConfigError, validate_parameters  # noqa: F401
from triton_guard.guard.finite import non_finite_output
from triton_guard.guard.healer import SideHealer
from triton_guard.guard.recovery import ActiveRecovery, FileProbeLock
from triton_guard.guard.shared_state import SharedFileStore
from triton_guard.guard.state_dir import default_state_dir
from triton_guard.guard.store import breaker_settings

METRICS_PUBLISH_S = 1.0  # how often buffered guard metrics reach /metrics
_INSTANCE_SUFFIX = re.compile(r"_\d+(_\d+)?$")  # <model>_<group>_<n>


def _flag(parameters: Mapping[str, str], name: str, default: bool) -> bool:
    # validate_parameters has checked the value already.
    return str(parameters.get(name, str(default))).strip().lower() == "true"


class GuardedUpstream:
    """One upstream model behind a breaker, a bulkhead and a hard deadline.

    `parameters` are the guard parameters as strings (config.pbtxt style);
    anything not given takes its default from triton_guard.defaults. A bad
    value raises ConfigError naming the parameter.
    """

    def __init__(
        self, upstream: str, *, instance_name: str = "", upstream_batches: bool = False, repository=None,
        **parameters: str
    ) -> None:
        self.upstream = upstream
        self.called = False  # set by the first infer: metrics publish from then on
        # The same checks `triton-guard guard` makes before it writes a config.
        self.config = validate_parameters(parameters)
        # One breaker, one configuration: a guard of another model with other settings fails its load here.
        self.store = SharedFileStore(default_state_dir(), report=pb_utils.Logger.log_warn)
        self.model_name = _INSTANCE_SUFFIX.sub("", instance_name) or f"guard of {upstream}"
        self.store.claim(upstream, self.model_name, breaker_settings(self.config))
        self.breaker = CircuitBreaker(upstream, self.config, self.store)
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
        self._check_finite = _flag(parameters, "check_finite", defaults.CHECK_FINITE)
        self._healer = None
        if _flag(parameters, "heal_dead_upstream", defaults.HEAL_DEAD_UPSTREAM):
            # Through Triton's repository API, from a thread of its own: no stub's request path waits.
            self._healer = SideHealer(
                upstream,
                http_url=os.environ.get(defaults.HTTP_URL_ENV, f"http://localhost:{defaults.HTTP_PORT}"),
                api_key=os.environ.get(defaults.API_KEY_ENV),
                min_interval_s=self.config.recovery_ms / 1000,
                state_dir=default_state_dir(),
                log=pb_utils.Logger.log_warn,
            )
        # Active recovery's probe input: (inputs, output names) of a recent good call.
        self._upstream_batches = upstream_batches
        self._probe_input: tuple[dict[str, np.ndarray], list[str]] | None = None
        self._probe_input_at = -float("inf")
        # Set by a placement with no BLS upstream: () -> probe(timeout_s), or None while it has no input.
        self.probe_call: Callable[[], Callable[[float], object] | None] | None = None
        self.recovery = ActiveRecovery(
            self.breaker,
            self._make_probe,
            _error_of,
            FileProbeLock(os.path.join(default_state_dir(), f"probe-{upstream}.lock")),
            on_transition=self._probe_transition,
        )
        # Output drift monitoring (drift_* parameters; `repository` resolves a relative drift_reference).
        self.drift = DriftTap.from_parameters(upstream, parameters, repository)
        self._publisher = _MetricsPublisher(self, instance_name or upstream)
        self._publisher.start()
        self._prober = None
        if self.recovery.enabled:
            self._prober = _Prober(self)
            self._prober.start()

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], *, requests: int = 1
    ) -> GuardResult:
        """One guarded BLS call carrying `requests` requests; on success `result.value` maps output names to arrays.

        Its deadline starts now (the library placement cannot see a queue wait before its execute).
        """
        self.called = True
        return self.guard.call(
            lambda timeout_s: self._bls(inputs, output_names, timeout_s), _error_of, requests=requests
        )

    def infer_requests(
        self,
        inputs: Sequence[Mapping[str, np.ndarray]],
        output_names: Sequence[str],
        arrivals: Sequence[float | None],
    ) -> list[GuardResult]:
        """One execute's requests (`inputs[i]`: request i's tensors) through `Guard.call_requests`.

        `arrivals[i]`: time.monotonic() seconds at which request i entered the
        pipeline, or None. Returns one result per request, in order; an ok
        result's value holds that request's rows only.
        """
        self.called = True

        def upstream_call(indices: Sequence[int], timeout_s: float):
            if len(indices) == 1:
                return self._bls(inputs[indices[0]], output_names, timeout_s)
            batch = {name: np.concatenate([inputs[i][name] for i in indices]) for name in inputs[indices[0]]}
            return self._bls(batch, output_names, timeout_s)

        results: list[GuardResult | None] = [None] * len(inputs)
        for part in self.guard.call_requests(arrivals, upstream_call, _error_of, batch=self._upstream_batches):
            if len(part.requests) == 1 or not part.result.ok:
                for i in part.requests:
                    results[i] = part.result
                continue
            first_input = next(iter(inputs[part.requests[0]]))
            rows = [inputs[i][first_input] for i in part.requests]
            per_output = {name: list(split_like(part.result.value[name], rows)) for name in output_names}
            for k, i in enumerate(part.requests):
                results[i] = GuardResult(Code.OK, value={name: per_output[name][k] for name in output_names})
        return results

    def _bls(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], timeout_s: float):
        """One BLS call: the outputs by name, or the upstream's error message (a str)."""
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
            self._seen_error(message)
            return message
        outputs = {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in output_names}
        if self._check_finite:
            problem = non_finite_output(outputs)
            if problem is not None:
                return problem  # classified as Failure.NON_FINITE
        self._keep_probe_input(inputs, output_names)
        return outputs

    def _seen_error(self, message: str) -> None:
        # Heal a dead upstream stub. Seen here too when the guard gave up on this call long ago.
        if self._healer is not None and is_stub_dead(message):
            self._healer.request()  # a thread beside this call: returns at once

    def _keep_probe_input(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]) -> None:
        # Rarely (one clock read per good call otherwise): a copy, since the
        # arrays may be views of request tensors that die with the request.
        now = time.monotonic()
        if now - self._probe_input_at < defaults.PROBE_SAMPLE_REFRESH_S or not self.recovery.enabled:
            return
        if self._upstream_batches:
            if any(len(array) == 0 for array in inputs.values()):
                return
            sample = {name: np.array(array[:1], copy=True) for name, array in inputs.items()}
        else:
            sample = {name: np.array(array, copy=True) for name, array in inputs.items()}
        self._probe_input, self._probe_input_at = (sample, list(output_names)), now

    def _make_probe(self):
        if self.probe_call is not None:  # the in-process placement probes its own model
            return self.probe_call()
        kept = self._probe_input
        if kept is None:
            return None
        inputs, output_names = kept
        return lambda timeout_s: self._bls(inputs, output_names, timeout_s)

    def _probe_transition(self, transition) -> None:
        self.metrics_buffer.transitioned(transition)
        pb_utils.Logger.log_info(
            f"guard: a recovery probe of '{self.upstream}' was answered; breaker {transition.to_state.name}"
        )

    def observe(self, outputs: Mapping[str, np.ndarray], requests: Sequence) -> None:
        """After a successful call: the drift monitor's copy of the answers (no-op when not configured).

        `requests`: the Triton requests the outputs answer, in row order (probe requests are left out).
        """
        if self.drift is not None:
            self.drift.observe(outputs, requests)

    def observe_results(self, results: Sequence[GuardResult], requests: Sequence) -> None:
        """`observe` for infer_requests' per-request results: the ok ones' answers."""
        if self.drift is not None:
            self.drift.observe_per_request([r.value if r.ok else None for r in results], requests)

    def error_response(self, result: GuardResult):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(result.message, self._error_codes[result.code]))

    def close(self) -> None:
        self._publisher.stop()
        if self.drift is not None:
            self.drift.close()
        if self._prober is not None:
            self._prober.stop()
        self.guard.close()


def _error_of(answer) -> str | None:
    # A string answer is the upstream's error message (BLS reports errors in the response).
    return answer if isinstance(answer, str) else None


class _Prober(threading.Thread):
    """Runs the guard's active recovery beside the request path (see triton_guard.guard.recovery)."""

    def __init__(self, upstream: GuardedUpstream) -> None:
        super().__init__(name=f"guard-probe-{upstream.upstream}", daemon=True)
        self._upstream = upstream
        self._stop = threading.Event()

    def run(self) -> None:
        # No BLS call from this thread before the model has served a request
        # (see _MetricsPublisher.publish); OPEN cannot happen earlier anyway.
        self._upstream.recovery.run(self._stop, may_call=lambda: self._upstream.called)

    def stop(self) -> None:
        self._stop.set()


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
            "damage": metric_families.family(catalogue.STATE_DAMAGE),
        }
        self.state = self.families["state"].Metric(labels=self.labels)
        self.inflight = self.families["inflight"].Metric(labels={**self.labels, "instance": instance_name})
        self.buckets = [self.families["bucket"].Metric(labels={**self.labels, "le": le}) for le in histogram.bucket_bounds]
        self.seconds_sum = self.families["sum"].Metric(labels=self.labels)
        self.seconds_count = self.families["count"].Metric(labels=self.labels)
        self._counters: dict = {}
        self._damage_published: dict[str, int] = {}

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
        for kind, total in list(self._upstream.store.damage.items()):
            n = total - self._damage_published.get(kind, 0)
            if n:
                self._counter("damage", "kind", kind).increment(n)
                self._damage_published[kind] = total
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
