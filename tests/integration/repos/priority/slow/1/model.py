"""Step 2 of `chain`: 50 ms per execute, one request per execute (max_batch_size 1), so requests queue."""

import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.05)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Z", pb_utils.get_input_tensor_by_name(r, "Y").as_numpy())])
                for r in requests]
