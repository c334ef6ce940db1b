"""The in-process placement: a Python model guarded inside its own stub process.

A model whose config says `backend: "guard"`, has no `upstream_model`
parameter and keeps its own `model.py` in its version directory (what
`triton-guard guard MODEL --in-process` makes of a Python model) is served by
this adapter: it imports that model.py under a unique module name, runs its
`initialize` and `finalize` as the python backend would, and runs every
`execute` on a bulkhead worker under the breaker and the hard deadline of
triton_guard.guard.core.Guard. No BLS call, no extra stub hop.

* A hung execute is abandoned at the deadline: every request of the batch
  gets UNAVAILABLE, the worker stays counted by the bulkhead until the
  model's execute returns, and what it returns then is dropped (a
  non-decoupled model answers only through execute's return value, so an
  abandoned call can never answer twice or late).
* An exception raised by execute is a failure carrying the model's message.
* An answer the model marks INVALID_ARG (the client's mistake) never counts
  against the model; nor does a message matching `client_error_pattern`.
* With the breaker OPEN, a batch costs one breaker read and the error
  responses: the model's code is not entered.

Who heals a dead stub here: the guard lives in that stub, so it cannot. The
canary's golden inferences see "Stub process '<instance>' is not healthy"
through the pipeline and reload the model (heal_dead_stub below, called by
triton_guard/backends/canary/model.py), at most once per canary interval,
through the same shared reload stamp as the guard step's healer.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import os
import re
import sys
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils

from triton_guard import defaults
from triton_guard.backends.runtime import GuardRuntime, Probe, arrival_s, model_of_instance, parameters_of, side_healer
from triton_guard.canary.allocator import start_reporter
from triton_guard.guard.config import ConfigError, GuardSettings
from triton_guard.guard.failures import Failure
from triton_guard.guard.finite import non_finite_in_batch
from triton_guard.guard.state_dir import default_state_dir

MODEL_FILE = "model.py"
_STUB_DEAD_INSTANCE = re.compile(r"Stub process '([^']+)' is not healthy")
_ANSWERED_WITH_ERRORS = (Failure.TIMEOUT, Failure.NON_FINITE)  # failures whose answers never go out


def own_model_file(args) -> str | None:
    """The model's own model.py when the config asks for the in-process placement, else None."""
    config = json.loads(args["model_config"])
    if "upstream_model" in config.get("parameters", {}):
        return None
    path = os.path.join(args["model_repository"], args["model_version"], MODEL_FILE)
    return path if os.path.isfile(path) else None


def _import_model(path: str, model_name: str, version: str):
    # A unique module name: the guard backend itself is the top-level `model`,
    # and two guarded models in one process must not share a module.
    safe = re.sub(r"\W", "_", f"{model_name}_{version}")
    module_name = f"triton_guard_in_process_{safe}_{os.getpid()}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, "TritonPythonModel"):
        raise RuntimeError(f"{path} defines no TritonPythonModel")
    return module


class InProcessGuard:
    """One instance of a guarded Python model: the model's own object behind the guard's runtime."""

    def __init__(self, args, model_file: str) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        if config.get("model_transaction_policy", {}).get("decoupled"):
            raise pb_utils.TritonModelException(
                f"guard model '{self.name}': a decoupled model cannot be guarded in-process (it answers "
                "outside execute, past any deadline); guard it as a step of its own")
        # The config's other parameters are the model's own: passed to it untouched.
        guard_params = {k: v for k, v in parameters_of(config).items() if k in GuardSettings.parameter_names()}
        try:
            # The breaker is shared per server and named after this model; the runtime has no BLS upstream.
            self.runtime = GuardRuntime(
                self.name, GuardSettings.from_parameters(self.name, guard_params), make_probe=self.make_probe,
                instance_name=args["model_instance_name"],
                repository=Path(args["model_repository"]).parent,  # resolves a relative drift_reference
            )  # fmt: skip
        except (ConfigError, ValueError) as exc:
            raise pb_utils.TritonModelException(f"guard model '{self.name}': {exc}") from None
        self.guard = self.runtime.guard
        self.drift = self.runtime.drift  # the output drift monitor, when drift_output is given
        outputs = [o["name"] for o in config.get("output", [])]
        if self.drift is not None and self.drift.config.output not in outputs:
            self.runtime.close()
            raise pb_utils.TritonModelException(
                f"guard model '{self.name}': drift_output={self.drift.config.output!r} is not one of its outputs {outputs}")
        self.stamped = any(i["name"] == defaults.ARRIVAL_INPUT for i in config.get("input", []))
        # The answers are opened (outputs by name) only when something reads them.
        self.examine = self.runtime.settings.check_finite or self.drift is not None
        try:
            module = _import_model(model_file, self.name, args["model_version"])
            self.model = module.TritonPythonModel()
            if hasattr(self.model, "initialize"):
                self.model.initialize(args)
        except Exception as exc:
            self.runtime.close()
            # The model's own message fails the load, as under the python backend.
            raise pb_utils.TritonModelException(f"model '{self.name}' failed to initialize: {exc}") from exc
        # A GPU instance reports its torch allocator's view for the canary (canary/allocator.py); None on CPU.
        self.allocator = start_reporter(args, default_state_dir())

    def execute(self, requests):
        # Deadlines (from pipeline arrival when stamped), the expired-before-the-guard
        # rule and the split-batch rule live in Guard.call_requests; this only translates.
        self.runtime.served = True
        arrivals = [arrival_s(r) for r in requests] if self.stamped else [None] * len(requests)
        answered = {}  # this execute's own: a late worker of an abandoned call writes only its own key
        opened = {}  # id(answers) -> each answer's outputs (None for an error answer)

        def run(indices, _timeout_s):
            answers = self._model_execute(requests if len(indices) == len(requests) else [requests[i] for i in indices])
            answered[indices] = answers
            return answers

        def error_of(answers):
            if not self.examine:
                return first_model_error(answers)
            error, outputs = opened_answers(answers)  # one pass: errors, and each answer's outputs
            opened[id(answers)] = outputs
            if error is None and self.runtime.settings.check_finite:
                error = non_finite_in_batch(outputs)  # classified as Failure.NON_FINITE
            return error

        responses = [None] * len(requests)
        monitored = [None] * len(requests) if self.drift is not None else None
        for part in self.guard.call_requests(arrivals, run, error_of):
            result = part.result
            if result.ok:
                answers = result.value
                if monitored is not None:
                    for i, outputs in zip(part.requests, opened[id(answers)]):
                        monitored[i] = outputs
            elif result.failure not in _ANSWERED_WITH_ERRORS and result.rejected is None and part.requests in answered:
                # The model answered in time, with errors: its own answers (and codes) go out.
                answers = answered[part.requests]
            else:
                answers = [self.runtime.error_response(result) for _ in part.requests]
            for i, answer in zip(part.requests, answers):
                responses[i] = answer
        if monitored is not None:  # a copy of the answers into the monitor's window
            self.drift.observe_per_request(monitored, requests)
        sample = self.runtime.probe_sample
        if sample.due(time.monotonic()) and not responses[0].has_error():
            self._keep_probe_request(requests[0], sample)
        return responses

    def _model_execute(self, requests):
        responses = self.model.execute(requests)
        if inspect.iscoroutine(responses):  # an `async def execute`: run it on this worker
            responses = asyncio.run(responses)
        return responses

    def _keep_probe_request(self, request, sample) -> None:
        # A copy: the request's tensors die with it.
        inputs = {t.name(): t.as_numpy().copy() for t in request.inputs()}
        sample.keep((inputs, list(request.requested_output_names())), time.monotonic())

    def make_probe(self) -> Probe | None:
        """Active recovery's call: a kept good request through the model itself (there is no BLS upstream)."""
        kept = self.runtime.probe_sample.value
        if kept is None:
            return None
        inputs, output_names = kept

        def probe(_timeout_s):
            # Runs on the guard's prober thread; ActiveRecovery holds one probe in flight at most.
            request = pb_utils.InferenceRequest(
                model_name=self.name,
                inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
                requested_output_names=output_names,
            )
            answers = self._model_execute([request])
            error, outputs = opened_answers(answers)
            problem = error or non_finite_in_batch(outputs)
            return problem if problem is not None else answers  # a str is the failure (runtime.answer_error)

        return probe

    def finalize(self) -> None:
        try:
            if hasattr(self.model, "finalize"):
                self.model.finalize()
        finally:
            if self.allocator is not None:
                self.allocator.close()
            self.runtime.close()


def first_model_error(answers) -> str | None:
    """The first error in the model's answers that is the model's fault, or None.

    The model's INVALID_ARG answers are its verdict on the client's input: the
    model worked. Other errors are classified by message (the guard's
    classifier), so `client_error_pattern` still applies to them. When every
    error is INVALID_ARG the batch is a success and the answers go out as they are.
    """
    for answer in answers:
        if answer.has_error():
            error = answer.error()
            if error.code() != pb_utils.TritonError.INVALID_ARG:
                return error.message()
    return None


def opened_answers(answers) -> tuple[str | None, list[dict | None]]:
    """(first_model_error's verdict, each answer's outputs by name) in one pass over the answers.

    Outputs are numpy views, no copy; None for an error answer.
    """
    error, outputs = None, []
    for answer in answers:
        if answer.has_error():
            outputs.append(None)
            if error is None and answer.error().code() != pb_utils.TritonError.INVALID_ARG:
                error = answer.error().message()
        else:
            outputs.append({t.name(): t.as_numpy() for t in answer.output_tensors()})
    return error, outputs


def heal_dead_stub(message: str, min_interval_s: float) -> str | None:
    """Reload the model whose stub `message` says is dead; returns its name, or None.

    Called by whoever sees the message from outside the dead stub (the
    canary's golden inferences). Triton 2.51 never restarts a dead stub, so
    a reload is right whatever the model's placement. It runs on a thread,
    at most once per `min_interval_s` per model for the whole server (the
    stamp is shared with the guard step's healer).
    """
    found = _STUB_DEAD_INSTANCE.search(message)
    if found is None:
        return None
    model = model_of_instance(found.group(1))
    healer = _HEALERS.get(model)
    if healer is None:
        # Through the repository API from a thread of its own (the same healer as the guard step's).
        healer = _HEALERS[model] = side_healer(model, min_interval_s)
    healer.request()
    return model


_HEALERS: dict = {}
