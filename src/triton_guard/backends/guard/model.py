"""The `guard` Python-based backend: a circuit breaker in front of another model.

A model whose config says `backend: "guard"` declares the same inputs and
outputs as the model it protects and names it in `parameters`
(`upstream_model`); every threshold is a parameter too (defaults in
triton_guard/defaults.py, validated at load: a bad value fails the load with
a message naming the parameter). Each dynamic batch becomes ONE BLS call to
the upstream (triton_guard.backends.bls.GuardedUpstream), which records one
outcome per request it carried. This file only translates between Triton and
that logic.
"""

import json

import triton_python_backend_utils as pb_utils

from triton_guard import defaults
from triton_guard.backends.bls import GuardedUpstream
from triton_guard.guard.config import ConfigError


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        name = model_config["name"]
        params = {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}
        upstream = params.pop("upstream_model", "").strip()
        if not upstream:
            raise pb_utils.TritonModelException(
                f"guard model '{name}': parameter 'upstream_model' is required (the name of the model to guard)"
            )
        try:
            self.upstream = GuardedUpstream(
                upstream,
                instance_name=args["model_instance_name"],
                # Same inputs and batching as the upstream: its requests can be concatenated.
                upstream_batches=model_config.get("max_batch_size", 0) > 0,
                **params,
            )
        except (ConfigError, ValueError) as exc:  # a bad client_error_pattern is a re.error (ValueError)
            raise pb_utils.TritonModelException(f"guard model '{name}': {exc}") from None
        # The arrival stamp is the guard's own input; everything else goes upstream.
        self.input_names = [i["name"] for i in model_config["input"] if i["name"] != defaults.ARRIVAL_INPUT]
        self.output_names = [o["name"] for o in model_config["output"]]

    def execute(self, requests):
        # Deadlines, the expired-before-the-guard rule and the split-batch rule
        # live in triton_guard.guard.core.Guard.call_requests; this only translates.
        inputs = [
            {name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.input_names} for r in requests
        ]
        results = self.upstream.infer_requests(inputs, self.output_names, [_arrival_s(r) for r in requests])
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(n, result.value[n]) for n in self.output_names])
            if result.ok
            else self.upstream.error_response(result)
            for result in results
        ]

    def finalize(self):
        self.upstream.close()


def _arrival_s(request):
    """When the request entered the pipeline (time.monotonic seconds), if a step before stamped it."""
    arrived = pb_utils.get_input_tensor_by_name(request, defaults.ARRIVAL_INPUT)
    return None if arrived is None else int(arrived.as_numpy().min()) / 1e9
