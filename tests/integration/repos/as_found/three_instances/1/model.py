"""Y = X * 10, and the name of the instance that answered (three of them)."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.instance = args["model_instance_name"].encode()

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", (pb_utils.get_input_tensor_by_name(r, "X").as_numpy() * 10).astype(np.float32)),
                pb_utils.Tensor("INSTANCE", np.array([self.instance], dtype=np.object_)),
            ])
            for r in requests
        ]
