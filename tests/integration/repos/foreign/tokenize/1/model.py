"""Upper-cases UTF-8 text and counts its characters: a BYTES input, BYTES and INT32 outputs."""

import numpy as np
import triton_python_backend_utils as pb_utils
from fault_hooks import FaultFile, answer_each  # tests/integration/repos/fault_hooks.py


class TritonPythonModel:
    def initialize(self, args):
        self.fault = FaultFile(args["model_repository"])

    def execute(self, requests):
        kind = self.fault.after_hang()
        mark = "!" if kind == "wrong" else ""

        def outputs(request):
            texts = [t.decode("utf-8") for t in pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)]
            upper = [(t.upper() + mark).encode("utf-8") for t in texts]
            return [
                pb_utils.Tensor("UPPER", np.array(upper, dtype=np.object_).reshape(-1, 1)),
                pb_utils.Tensor("LENGTH", np.array([len(t) for t in texts], dtype=np.int32).reshape(-1, 1)),
            ]

        return answer_each(requests, "tokenize: injected error" if kind == "error" else None, outputs)
