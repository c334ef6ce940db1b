"""Guards `stuck` and `healthy` from inside one model (triton_guard.backends.bls)."""

import triton_python_backend_utils as pb_utils

from triton_guard.backends.bls import GuardedUpstream


class TritonPythonModel:
    def initialize(self, args):
        # More hung calls than asyncio's default executor has threads (6 on 2 cores).
        limits = {"timeout_ms": "300", "max_inflight": "10", "failure_threshold": "100", "minimum_calls": "20"}
        # `healthy` is guarded by healthy_guard too: one breaker, so healthy_guard's settings
        # (max_inflight is per instance and may differ).
        shared = {"timeout_ms": "300", "max_inflight": "10"}
        name = args["model_instance_name"]
        self.upstreams = {
            "stuck": GuardedUpstream("stuck", instance_name=name, **limits),
            "healthy": GuardedUpstream("healthy", instance_name=name, **shared),
        }

    def execute(self, requests):
        responses = []
        for request in requests:
            target = pb_utils.get_input_tensor_by_name(request, "TARGET").as_numpy()[0, 0].decode()
            upstream = self.upstreams[target]
            result = upstream.infer({"X": pb_utils.get_input_tensor_by_name(request, "X").as_numpy()}, ["Y"])
            if result.ok:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", result.value["Y"])]))
            else:
                responses.append(upstream.error_response(result))
        return responses

    def finalize(self):
        for upstream in self.upstreams.values():
            upstream.close()
