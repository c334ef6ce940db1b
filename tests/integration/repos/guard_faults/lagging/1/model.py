"""Test-only upstream like `faulty` that also logs when each execute starts.

$TRITON_GUARD_TEST_FAULTS/lagging.json holds {"mode": ...}: ok (Y = 2 * X),
hang (execute does not return until the mode changes) or error. Every execute
appends "<time.monotonic() at its start> <requests>" to
$TRITON_GUARD_TEST_FAULTS/lagging.log, so a test can count what reached the
model while it hung (CLOCK_MONOTONIC is one clock for every process).
"""

import json
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        name = json.loads(args["model_config"])["name"]
        faults = os.environ["TRITON_GUARD_TEST_FAULTS"]
        self.control = os.path.join(faults, f"{name}.json")
        self.log = os.path.join(faults, f"{name}.log")

    def fault(self):
        try:
            with open(self.control) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"mode": "ok"}

    def execute(self, requests):
        with open(self.log, "a") as log:
            log.write(f"{time.monotonic()} {len(requests)}\n")
        fault = self.fault()
        while fault["mode"] == "hang":
            time.sleep(0.02)
            fault = self.fault()
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            if fault["mode"] == "error":
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("injected upstream failure")))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", 2 * x)]))
        return responses
