"""Test-only upstream whose behaviour a test sets through a control file.

$TRITON_GUARD_TEST_FAULTS/<model name>.json holds {"mode": ...}:
  ok     Y = 2 * X
  hang   execute does not return until the mode changes
  error  every request fails (an upstream error)
  slow   answers after "slow_ms"
A request whose first value is negative gets the model's own bad-input
error, as a user's model would report it.
"""

import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        name = json.loads(args["model_config"])["name"]
        self.control = os.path.join(os.environ["TRITON_GUARD_TEST_FAULTS"], f"{name}.json")

    def fault(self):
        try:
            with open(self.control) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"mode": "ok"}

    def execute(self, requests):
        fault = self.fault()
        while fault["mode"] == "hang":
            time.sleep(0.02)
            fault = self.fault()
        if fault["mode"] == "slow":
            time.sleep(fault["slow_ms"] / 1000)
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if fault["mode"] == "error":
                error = pb_utils.TritonError("injected upstream failure")
            elif (x[:, 0] < 0).any():
                error = pb_utils.TritonError("X must be non-negative", pb_utils.TritonError.INVALID_ARG)
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", 2 * x)]))
                continue
            responses.append(pb_utils.InferenceResponse(error=error))
        return responses
