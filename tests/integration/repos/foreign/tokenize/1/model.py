"""Upper-cases UTF-8 text and counts its characters: a BYTES input, BYTES and INT32 outputs."""

import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def fault(model_dir):
    try:
        with open(os.path.join(model_dir, "FAULT")) as f:
            return f.read().strip()
    except OSError:
        return ""


class TritonPythonModel:
    def initialize(self, args):
        self.model_dir = args["model_repository"]

    def execute(self, requests):
        while fault(self.model_dir) == "hang":
            time.sleep(0.02)
        kind = fault(self.model_dir)
        responses = []
        for request in requests:
            if kind == "error":
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("tokenize: injected error")))
                continue
            texts = [t.decode("utf-8") for t in pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)]
            upper = [(t.upper() + ("!" if kind == "wrong" else "")).encode("utf-8") for t in texts]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("UPPER", np.array(upper, dtype=np.object_).reshape(-1, 1)),
                pb_utils.Tensor("LENGTH", np.array([len(t) for t in texts], dtype=np.int32).reshape(-1, 1)),
            ]))
        return responses
