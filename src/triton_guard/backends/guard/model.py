"""The `guard` Python-based backend: a circuit breaker in front of another model.

A model whose config says `backend: "guard"` declares the same inputs and
outputs as the model it protects and names it in `parameters`
(`upstream_model`); every threshold is a parameter too (defaults in
triton_guard/defaults.py, validated at load: a bad value fails the load with
a message naming the parameter). Each dynamic batch becomes ONE BLS call to
the upstream (triton_guard.bls.GuardedUpstream). This file only translates
between Triton and that logic.
"""

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_guard import defaults
from triton_guard.guard.batching import split_like
from triton_guard.backends.bls import GuardedUpstream
from triton_guard.guard.failures import Failure
from triton_guard.guard.config import ConfigError
from triton_guard.backends.guard import in_process


class TritonPythonModel:
    def initialize(self, args):
        own_model = in_process.own_model_file(args)
        if own_model is not None:  # no upstream_model, a model.py of its own: guard it in this process
            guarded = in_process.InProcessGuard(args, own_model)
            self.execute, self.finalize = guarded.execute, guarded.finalize
            return
        model_config = json.loads(args["model_config"])
        name = model_config["name"]
        params = {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}
        upstream = params.pop("upstream_model", "").strip()
        if not upstream:
            raise pb_utils.TritonModelException(
                f"guard model '{name}': parameter 'upstream_model' is required (the name of the model to guard)"
            )
        try:
            self.upstream = GuardedUpstream(upstream, instance_name=args["model_instance_name"], **params)
        except (ConfigError, ValueError) as exc:  # a bad client_error_pattern is a re.error (ValueError)
            raise pb_utils.TritonModelException(f"guard model '{name}': {exc}") from None
        # The arrival stamp is the guard's own input; everything else goes upstream.
        self.input_names = [i["name"] for i in model_config["input"] if i["name"] != defaults.ARRIVAL_INPUT]
        self.output_names = [o["name"] for o in model_config["output"]]
        self.timeout_ns = self.upstream.config.timeout_ms * 1_000_000

    def execute(self, requests):
        now = time.monotonic_ns()
        deadlines = [self._deadline_ns(r, now) for r in requests]
        live = [i for i, deadline in enumerate(deadlines) if deadline > now]
        responses = [None] * len(requests)
        for i in set(range(len(requests))) - set(live):
            responses[i] = self._expired(now - (deadlines[i] - self.timeout_ns))
        if live:
            for i, response in zip(live, self._call([requests[i] for i in live], (min(deadlines[i] for i in live) - now) / 1e9)):
                responses[i] = response
        return responses

    def _deadline_ns(self, request, now):
        """timeout_ms after the request entered the pipeline (or reached the guard, unstamped)."""
        arrived = pb_utils.get_input_tensor_by_name(request, defaults.ARRIVAL_INPUT)
        return (int(arrived.as_numpy().min()) if arrived is not None else now) + self.timeout_ns

    def _expired(self, waited_ns):
        # Waiting in front of a busy guard is not the upstream's failure: no breaker record.
        self.upstream.metrics_buffer.rejected("deadline")
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(
            f"model '{self.upstream.upstream}': deadline timeout_ms={self.upstream.config.timeout_ms} passed "
            f"after {waited_ns / 1e6:.0f} ms of waiting before the guard", pb_utils.TritonError.UNAVAILABLE))

    def _call(self, requests, budget_s):
        inputs = {
            name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            for name in self.input_names
        }
        result = self.upstream.infer({n: np.concatenate(a) for n, a in inputs.items()}, self.output_names, budget_s)
        if result.failure is Failure.CLIENT_ERROR and len(requests) > 1:
            # One bad request must not fail the good ones batched with it.
            return [self._respond_one({n: a[i] for n, a in inputs.items()}, budget_s) for i in range(len(requests))]
        if not result.ok:
            return [self.upstream.error_response(result) for _ in requests]
        rows = inputs[self.input_names[0]]
        per_output = [split_like(result.value[name], rows) for name in self.output_names]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(n, part) for n, part in zip(self.output_names, parts)])
            for parts in zip(*per_output)
        ]

    def _respond_one(self, inputs, budget_s):
        result = self.upstream.infer(inputs, self.output_names, budget_s)
        if not result.ok:
            return self.upstream.error_response(result)
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, result.value[n]) for n in self.output_names])

    def finalize(self):
        self.upstream.close()
