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
from triton_guard.backends.bls import EXTRA_PARAMETERS, GuardedUpstream
from triton_guard.guard.config import DRIFT_PARAMETERS, ConfigError, GuardConfig
from triton_guard.guard.failures import Failure
from triton_guard.guard.finite import non_finite_output
from triton_guard.guard.healer import SideHealer
from triton_guard.guard.state_dir import default_state_dir

MODEL_FILE = "model.py"
_STUB_DEAD_INSTANCE = re.compile(r"Stub process '([^']+)' is not healthy")
_INSTANCE_SUFFIX = re.compile(r"_\d+(?:_\d+)?$")  # <model>_<group>_<index>


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
    """One instance of a guarded Python model: the model's own object behind a Guard."""

    def __init__(self, args, model_file: str) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        if config.get("model_transaction_policy", {}).get("decoupled"):
            raise pb_utils.TritonModelException(
                f"guard model '{self.name}': a decoupled model cannot be guarded in-process (it answers "
                "outside execute, past any deadline); guard it as a step of its own")
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        guard_params = {k: v for k, v in params.items() if k in _GUARD_PARAMETER_NAMES}
        try:
            # GuardedUpstream gives the breaker (shared per server, named after
            # this model), the Guard, the metrics buffer and its publisher; its
            # BLS `infer` is not used here.
            self.guarded = GuardedUpstream(
                self.name, instance_name=args["model_instance_name"],
                repository=Path(args["model_repository"]).parent,  # resolves a relative drift_reference
                **guard_params)
        except (ConfigError, ValueError) as exc:
            raise pb_utils.TritonModelException(f"guard model '{self.name}': {exc}") from None
        self.guard = self.guarded.guard
        self.drift = self.guarded.drift  # the output drift monitor, when drift_output is given
        outputs = [o["name"] for o in config.get("output", [])]
        if self.drift is not None and self.drift.config.output not in outputs:
            self.guarded.close()
            raise pb_utils.TritonModelException(
                f"guard model '{self.name}': drift_output={self.drift.config.output!r} is not one of its outputs {outputs}")
        self.stamped = any(i["name"] == defaults.ARRIVAL_INPUT for i in config.get("input", []))
        # Active recovery: while OPEN, the guard's prober runs one good request of a recent
        # execute through the model itself (there is no upstream to send a BLS probe to).
        self._probe_request: tuple[dict, list] | None = None
        self._probe_request_at = -float("inf")
        self.guarded.probe_call = self._make_probe
        try:
            module = _import_model(model_file, self.name, args["model_version"])
            self.model = module.TritonPythonModel()
            if hasattr(self.model, "initialize"):
                self.model.initialize(args)
        except Exception as exc:
            self.guarded.close()
            # The model's own message fails the load, as under the python backend.
            raise pb_utils.TritonModelException(f"model '{self.name}' failed to initialize: {exc}") from exc

    def execute(self, requests):
        # Deadlines (from pipeline arrival when stamped), the expired-before-the-guard
        # rule and the split-batch rule live in Guard.call_requests; this only translates.
        self.guarded.called = True  # the metrics publisher may talk to the server from now on
        arrivals = [_arrival_s(r) for r in requests] if self.stamped else [None] * len(requests)
        answered = {}  # this execute's own: a late worker of an abandoned call writes only its own key

        def run(indices, _timeout_s):
            responses = self.model.execute([requests[i] for i in indices])
            if inspect.iscoroutine(responses):  # an `async def execute`: run it on this worker
                responses = asyncio.run(responses)
            answered[tuple(indices)] = responses
            return responses

        error_of = _error_or_non_finite if self.guarded._check_finite else _error_of
        responses = [None] * len(requests)
        for part in self.guard.call_requests(arrivals, run, error_of):
            result = part.result
            if result.ok:
                answers = result.value
            elif (result.failure not in (Failure.TIMEOUT, Failure.NON_FINITE) and result.rejected is None
                  and part.requests in answered):
                # The model answered in time, with errors: its own answers (and codes) go out.
                answers = answered[part.requests]
            else:
                answers = [self.guarded.error_response(result) for _ in part.requests]
            for i, answer in zip(part.requests, answers):
                responses[i] = answer
        if self.drift is not None:  # a copy of the answers into the monitor's window
            self.drift.observe_per_request([self._monitored(r) for r in responses], requests)
        self._keep_probe_request(requests[0], responses[0])
        return responses

    def _keep_probe_request(self, request, response) -> None:
        # Rarely (one clock read per execute otherwise): a copy, the request's tensors die with it.
        now = time.monotonic()
        if now - self._probe_request_at < defaults.PROBE_SAMPLE_REFRESH_S or response.has_error():
            return
        if not self.guarded.recovery.enabled:
            return
        inputs = {t.name(): t.as_numpy().copy() for t in request.inputs()}
        self._probe_request = (inputs, list(request.requested_output_names()))
        self._probe_request_at = now

    def _make_probe(self):
        kept = self._probe_request
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
            responses = self.model.execute([request])
            if inspect.iscoroutine(responses):
                responses = asyncio.run(responses)
            problem = _error_or_non_finite(responses)
            return problem if problem is not None else responses  # a str is the failure (bls._error_of)

        return probe

    def _monitored(self, response):
        if response.has_error():
            return None
        tensor = pb_utils.get_output_tensor_by_name(response, self.drift.config.output)
        return None if tensor is None else {self.drift.config.output: tensor.as_numpy()}

    def finalize(self) -> None:
        try:
            if hasattr(self.model, "finalize"):
                self.model.finalize()
        finally:
            self.guarded.close()


def _arrival_s(request):
    """When the request entered the pipeline (time.monotonic seconds), if a step before stamped it."""
    arrived = pb_utils.get_input_tensor_by_name(request, defaults.ARRIVAL_INPUT)
    return None if arrived is None else int(arrived.as_numpy().min()) / 1e9


def _error_of(responses) -> str | None:
    """The first error in the model's answers that is the model's fault, or None.

    The model's INVALID_ARG answers are its verdict on the client's input: the
    model worked. Other errors are classified by message (Guard's classifier),
    so `client_error_pattern` still applies to them. When every error is
    INVALID_ARG the batch is a success and the model's answers go out as they are.
    """
    for response in responses:
        if response.has_error():
            error = response.error()
            if error.code() != pb_utils.TritonError.INVALID_ARG:
                return error.message()
    return None


def _error_or_non_finite(responses) -> str | None:
    """_error_of, and NaN or inf in a floating-point output is the model's failure too (never an answer)."""
    error = _error_of(responses)
    if error is not None:
        return error
    for response in responses:
        if not response.has_error():
            problem = non_finite_output({t.name(): t.as_numpy() for t in response.output_tensors()})
            if problem is not None:
                return problem  # classified as Failure.NON_FINITE
    return None


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
    model = _INSTANCE_SUFFIX.sub("", found.group(1))
    healer = _HEALERS.get(model)
    if healer is None:
        # Through the repository API from a thread of its own (the same healer as the guard step's).
        healer = _HEALERS[model] = SideHealer(
            model,
            http_url=os.environ.get(defaults.HTTP_URL_ENV, f"http://localhost:{defaults.HTTP_PORT}"),
            api_key=os.environ.get(defaults.API_KEY_ENV),
            min_interval_s=min_interval_s,
            state_dir=default_state_dir(),
            log=lambda line: pb_utils.Logger.log_warn(line),
        )
    healer.request()
    return model


_HEALERS: dict = {}
# The config's other parameters are the model's own: passed to it untouched.
_GUARD_PARAMETER_NAMES = GuardConfig.parameter_names() | EXTRA_PARAMETERS | DRIFT_PARAMETERS
