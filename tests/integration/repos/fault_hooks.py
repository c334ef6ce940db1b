"""The test models' fault hooks, in one place: how a test makes a model hang, fail or answer wrong.

The models under repos/ import this module by name (`from fault_hooks import ...`)
inside their Triton stubs: tests/integration/conftest.py puts this folder on
PYTHONPATH, which every server the tests start hands to its stubs, so copies of
the repositories find it too. Two ways a test sets a model's behaviour:

* `FaultFile` (repos/foreign): a file named FAULT in the model's directory,
  beside config.pbtxt, holding `hang` (execute blocks while the file says so),
  `wrong` (answers are off) or `error` (every request gets an error); no file,
  no fault. The tests write it in their copy of the repository.
* `FaultControl` (repos/guard_faults, repos/in_process):
  $TRITON_GUARD_TEST_FAULTS/<model name>.json holding {"mode": ...}, one of
  ok, hang, error, slow (answers after "slow_ms") or raise (execute raises),
  written atomically by tests/integration/conftest.py's `set_fault`. A model
  can log its executes to files beside it, so a test can count them.

`answer_each` and `answer_x` make one response per request under a fault.
"""

import json
import os
import time

import triton_python_backend_utils as pb_utils

HANG_POLL_S = 0.02  # a hung execute notices the fault is gone within this long
FAULTS_ENV = "TRITON_GUARD_TEST_FAULTS"


class FaultFile:
    """The FAULT file beside a model's config.pbtxt: 'hang', 'wrong', 'error' or '' (none)."""

    def __init__(self, model_dir: str) -> None:
        self.path = os.path.join(model_dir, "FAULT")

    def read(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip()
        except OSError:
            return ""

    def after_hang(self) -> str:
        """Blocks while the file says 'hang'; then what it says."""
        kind = self.read()
        while kind == "hang":
            time.sleep(HANG_POLL_S)
            kind = self.read()
        return kind


class FaultControl:
    """$TRITON_GUARD_TEST_FAULTS/<model name>.json, and logs beside it (<model name>.<suffix>)."""

    def __init__(self, args: dict) -> None:
        self.name = json.loads(args["model_config"])["name"]
        self.folder = os.environ[FAULTS_ENV]
        self.path = os.path.join(self.folder, f"{self.name}.json")

    def read(self) -> dict:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"mode": "ok"}

    def after_hang(self, fault: dict | None = None) -> dict:
        """Blocks while the mode is 'hang' (from `fault`, a first read); sleeps `slow_ms` when 'slow'; the fault."""
        fault = self.read() if fault is None else fault
        while fault["mode"] == "hang":
            time.sleep(HANG_POLL_S)
            fault = self.read()
        if fault["mode"] == "slow":
            time.sleep(fault["slow_ms"] / 1000)
        return fault

    def log(self, suffix: str, line: str) -> None:
        """Appends `line` to <model name>.<suffix> beside the control file, where a test counts them."""
        with open(os.path.join(self.folder, f"{self.name}.{suffix}"), "a") as f:
            f.write(line + "\n")


def answer_each(requests, failure: str | None, outputs) -> list:
    """One response per request: the error `failure` when it is set, else the tensors `outputs(request)` makes."""
    if failure is not None:
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError(failure)) for _ in requests]
    return [pb_utils.InferenceResponse(outputs(request)) for request in requests]


def answer_x(requests, fault: dict, scale: float, failure: str) -> list:
    """Y = scale * X per request; under 'error' every request fails with `failure`.

    A request whose first value is negative gets the model's own bad-input
    error (INVALID_ARG), as a user's model would report it.
    """
    responses = []
    for request in requests:
        x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
        if fault["mode"] == "error":
            error = pb_utils.TritonError(failure)
        elif (x[:, 0] < 0).any():
            error = pb_utils.TritonError("X must be non-negative", pb_utils.TritonError.INVALID_ARG)
        else:
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", scale * x)]))
            continue
        responses.append(pb_utils.InferenceResponse(error=error))
    return responses
