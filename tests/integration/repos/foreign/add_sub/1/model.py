"""INPUT0 + INPUT1 and INPUT0 - INPUT1 (python_backend's add_sub example), with a test fault file."""

import triton_python_backend_utils as pb_utils
from fault_hooks import FaultFile, answer_each  # tests/integration/repos/fault_hooks.py


class TritonPythonModel:
    def initialize(self, args):
        self.fault = FaultFile(args["model_repository"])

    def execute(self, requests):
        kind = self.fault.after_hang()
        off = 1.0 if kind == "wrong" else 0.0

        def outputs(request):
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            return [
                pb_utils.Tensor("OUTPUT0", (a + b + off).astype("float32")),
                pb_utils.Tensor("OUTPUT1", (a - b).astype("float32")),
            ]

        return answer_each(requests, "add_sub: injected error" if kind == "error" else None, outputs)
