"""The guard's BLS placements: a guarded call to another model, from the guard step or from a user's model.

Import this only inside a Triton Python model (it needs the stub's
`triton_python_backend_utils`). It serves both BLS placements:

* the `guard` backend (triton_guard/backends/guard/model.py), a step of its own;
* a library call from a user's own Python model, which saves a hop::

      from triton_guard import GuardedUpstream

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
breaker per server (backends/runtime.py has the rest of the runtime).

`requests=len(requests)`: thresholds count requests, so a call carrying a
whole dynamic batch records one outcome per request. While the breaker is
OPEN, active recovery probes the upstream with one row of a recent good
call's inputs (`upstream_batches=True`; else the whole inputs of that call).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_guard.backends.runtime import GuardRuntime, Probe, answer_error
from triton_guard.guard.batching import split_like
from triton_guard.guard.config import GuardSettings
from triton_guard.guard.finite import non_finite_output
from triton_guard.guard.policy import Code, GuardResult


class GuardedUpstream(GuardRuntime):
    """One upstream model, called through BLS, behind a breaker, a bulkhead and a hard deadline.

    `parameters` are the guard parameters as strings (config.pbtxt style);
    anything not given takes its default from triton_guard.defaults. A bad
    value raises ConfigError naming the parameter.
    """

    def __init__(
        self,
        upstream: str,
        *,
        instance_name: str = "",
        upstream_batches: bool = False,
        repository: Path | None = None,
        **parameters: str,
    ) -> None:
        self.upstream_batches = upstream_batches
        super().__init__(
            upstream,
            GuardSettings.from_parameters(upstream, parameters),
            make_probe=self.make_probe,
            instance_name=instance_name,
            repository=repository,
        )

    def infer(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], *, requests: int = 1) -> GuardResult:
        """One guarded BLS call carrying `requests` requests; on success `result.value` maps output names to arrays.

        Its deadline starts now (the library placement cannot see a queue wait before its execute).
        """
        self.served = True
        return self.guard.call(lambda timeout_s: self.call(inputs, output_names, timeout_s), answer_error, requests=requests)

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
        self.served = True

        def upstream_call(indices: Sequence[int], timeout_s: float):
            if len(indices) == 1:
                return self.call(inputs[indices[0]], output_names, timeout_s)
            batch = {name: np.concatenate([inputs[i][name] for i in indices]) for name in inputs[indices[0]]}
            return self.call(batch, output_names, timeout_s)

        results: list[GuardResult | None] = [None] * len(inputs)
        for part in self.guard.call_requests(arrivals, upstream_call, answer_error, batch=self.upstream_batches):
            if len(part.requests) == 1 or not part.result.ok:
                for i in part.requests:
                    results[i] = part.result
                continue
            first_input = next(iter(inputs[part.requests[0]]))
            rows = [inputs[i][first_input] for i in part.requests]
            per_output = {name: list(split_like(part.result.value[name], rows)) for name in output_names}
            for k, i in enumerate(part.requests):
                results[i] = GuardResult(Code.OK, {name: per_output[name][k] for name in output_names})
        return results

    def call(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], timeout_s: float):
        """One BLS call: the outputs by name, or the upstream's error message (a str)."""
        request = pb_utils.InferenceRequest(
            model_name=self.upstream,
            inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
            requested_output_names=list(output_names),
            # Also bounds the time in the upstream's queue (needs its queue policy). BLS counts in µs.
            timeout=int(timeout_s * 1_000_000),
        )
        response = request.exec()
        if response.has_error():
            message = response.error().message()
            self.seen_error(message)
            return message
        outputs = {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in output_names}
        if self.settings.check_finite:
            problem = non_finite_output(outputs)
            if problem is not None:
                return problem  # classified as Failure.NON_FINITE
        now = time.monotonic()
        if self.probe_sample.due(now):
            self._keep_probe_input(inputs, output_names, now)
        return outputs

    def _keep_probe_input(self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], now: float) -> None:
        # A copy: the arrays may be views of request tensors that die with the request.
        if self.upstream_batches:
            if any(len(array) == 0 for array in inputs.values()):
                return
            sample = {name: np.array(array[:1], copy=True) for name, array in inputs.items()}
        else:
            sample = {name: np.array(array, copy=True) for name, array in inputs.items()}
        self.probe_sample.keep((sample, list(output_names)), now)

    def make_probe(self) -> Probe | None:
        kept = self.probe_sample.value
        if kept is None:
            return None
        inputs, output_names = kept
        return lambda timeout_s: self.call(inputs, output_names, timeout_s)

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
