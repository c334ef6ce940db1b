"""Test-only upstream whose behaviour a test sets through a control file (fault_hooks.FaultControl).

$TRITON_GUARD_TEST_FAULTS/<model name>.json holds {"mode": ...}:
  ok     Y = 2 * X
  hang   execute does not return until the mode changes
  error  every request fails (an upstream error)
  slow   answers after "slow_ms"
A request whose first value is negative gets the model's own bad-input
error, as a user's model would report it. `stuck` is this model too.
"""

from fault_hooks import FaultControl, answer_x  # tests/integration/repos/fault_hooks.py


class TritonPythonModel:
    def initialize(self, args):
        self.control = FaultControl(args)

    def execute(self, requests):
        return answer_x(requests, self.control.after_hang(), 2, "injected upstream failure")
