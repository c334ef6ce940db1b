"""Test-only Python model, guarded in-process, whose behaviour a test sets through a file.

$TRITON_GUARD_TEST_FAULTS/<model name>.json holds {"mode": ...}
(fault_hooks.FaultControl):
  ok     Y = scale * X (scale: the model's own config parameter)
  hang   execute does not return until the mode changes
  error  every request gets an error answer (the model's fault)
  raise  execute raises
Every execute appends one line to <model name>.calls when it starts and one
to <model name>.returned when it ends, so a test can tell whether the model's
code ran, and when an abandoned execute has come back. A request whose first
value is negative gets the model's own INVALID_ARG answer (the client's mistake).
"""

import json

from fault_hooks import FaultControl, answer_x  # tests/integration/repos/fault_hooks.py


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.scale = float(config["parameters"]["scale"]["string_value"])
        self.control = FaultControl(args)

    def execute(self, requests):
        self.control.log("calls", str(len(requests)))
        try:
            fault = self.control.after_hang()
            if fault["mode"] == "raise":
                raise RuntimeError("injected exception in execute")
            return answer_x(requests, fault, self.scale, "injected model failure")
        finally:
            self.control.log("returned", str(len(requests)))
