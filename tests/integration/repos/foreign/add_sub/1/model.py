"""INPUT0 + INPUT1 and INPUT0 - INPUT1 (python_backend's add_sub example), with a test fault file."""

import os
import time

import triton_python_backend_utils as pb_utils


def fault(model_dir):
    """'hang', 'wrong', 'error' or '' from the FAULT file beside config.pbtxt."""
    try:
        with open(os.path.join(model_dir, "FAULT")) as f:
            return f.read().strip()
    except OSError:
        return ""


class TritonPythonModel:
    def initialize(self, args):
        self.model_dir = os.path.join(args["model_repository"])

    def execute(self, requests):
        while fault(self.model_dir) == "hang":
            time.sleep(0.02)
        kind = fault(self.model_dir)
        responses = []
        for request in requests:
            if kind == "error":
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("add_sub: injected error")))
                continue
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            off = 1.0 if kind == "wrong" else 0.0
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUTPUT0", (a + b + off).astype("float32")),
                pb_utils.Tensor("OUTPUT1", (a - b).astype("float32")),
            ]))
        return responses
