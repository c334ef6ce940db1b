"""Test-only Python model, guarded in-process, whose behaviour a test sets through a file.

$TRITON_GUARD_TEST_FAULTS/<model name>.json holds {"mode": ...}:
  ok     Y = scale * X (scale: the model's own config parameter)
  hang   execute does not return until the mode changes
  error  every request gets an error answer (the model's fault)
  raise  execute raises
Every execute appends one line to <model name>.calls, so a test can tell
whether the model's code ran. A request whose first value is negative gets
the model's own INVALID_ARG answer (the client's mistake).
"""

import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.scale = float(config["parameters"]["scale"]["string_value"])
        faults = os.environ["TRITON_GUARD_TEST_FAULTS"]
        self.control = os.path.join(faults, f"{config['name']}.json")
        self.calls = os.path.join(faults, f"{config['name']}.calls")

    def fault(self):
        try:
            with open(self.control) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"mode": "ok"}

    def execute(self, requests):
        with open(self.calls, "a") as f:
            f.write(f"{len(requests)}\n")
        fault = self.fault()
        while fault["mode"] == "hang":
            time.sleep(0.02)
            fault = self.fault()
        if fault["mode"] == "raise":
            raise RuntimeError("injected exception in execute")
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if fault["mode"] == "error":
                error = pb_utils.TritonError("injected model failure")
            elif (x[:, 0] < 0).any():
                error = pb_utils.TritonError("X must be non-negative", pb_utils.TritonError.INVALID_ARG)
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", self.scale * x)]))
                continue
            responses.append(pb_utils.InferenceResponse(error=error))
        return responses
