"""INPUT0 + INPUT1 and INPUT0 - INPUT1, with no config.pbtxt: the model completes its own config at load.

As NVIDIA's python_backend `auto_complete` example (batch_model.py and
nobatch_model.py in one file): `batch_auto` batches up to 4, any other name
(`nobatch_auto`, whose model.py links here) does not batch. A test fault: a
file FAULT in the model's folder holding `hang` (execute waits while it
does), `wrong` (OUTPUT0 off by one) or `error` (fault_hooks.FaultFile).
"""

import numpy as np
import triton_python_backend_utils as pb_utils
from fault_hooks import FaultFile, answer_each  # tests/integration/repos/fault_hooks.py


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        name = config.as_dict()["name"]
        for tensor in ("INPUT0", "INPUT1"):
            config.add_input({"name": tensor, "data_type": "TYPE_FP32", "dims": [4]})
        for tensor in ("OUTPUT0", "OUTPUT1"):
            config.add_output({"name": tensor, "data_type": "TYPE_FP32", "dims": [4]})
        if name.startswith("batch"):
            config.set_max_batch_size(4)
            config.set_dynamic_batching()
        else:
            config.set_max_batch_size(0)
        return config

    def initialize(self, args):
        self.fault = FaultFile(args["model_repository"])

    def execute(self, requests):
        fault = self.fault.after_hang()

        def outputs(request):
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            return [
                pb_utils.Tensor("OUTPUT0", (a + b + (1 if fault == "wrong" else 0)).astype(np.float32)),
                pb_utils.Tensor("OUTPUT1", (a - b).astype(np.float32)),
            ]

        return answer_each(requests, "injected error" if fault == "error" else None, outputs)
