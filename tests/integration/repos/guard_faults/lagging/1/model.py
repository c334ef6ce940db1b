"""Test-only upstream like `faulty` that also logs when each execute starts.

$TRITON_GUARD_TEST_FAULTS/lagging.json holds {"mode": ...}: ok (Y = 2 * X),
hang (execute does not return until the mode changes) or error. Every execute
appends "<time.monotonic() at its start> <requests> <the mode it found>" to
$TRITON_GUARD_TEST_FAULTS/lagging.log, so a test can count what reached the
model while it hung (CLOCK_MONOTONIC is one clock for every process). A
negative first value gets the model's own INVALID_ARG, as in `faulty`.
"""

import time

from fault_hooks import FaultControl, answer_x  # tests/integration/repos/fault_hooks.py


class TritonPythonModel:
    def initialize(self, args):
        self.control = FaultControl(args)

    def execute(self, requests):
        started, fault = time.monotonic(), self.control.read()
        self.control.log("log", f"{started} {len(requests)} {fault['mode']}")
        return answer_x(requests, self.control.after_hang(fault), 2, "injected upstream failure")
